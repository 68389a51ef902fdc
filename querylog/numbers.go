package querylog

// ZeroNumbers copies sql with every numeric literal's digits replaced by
// 0, so queries that differ only in numbers ("WHERE aid = 4711", pgbench's
// and many ORMs' point reads) share one classifier cache entry. Only runs
// standing alone are replaced: digits touching a word (t2, $1, 1e5, 0x1F)
// or a fraction point are kept. A number's value changes neither a
// statement's shape nor (in a SELECT) whether it parses or writes.
func ZeroNumbers(dst, sql []byte) []byte {
	done := 0 // sql[:done] is in dst
	for i := 0; i < len(sql); {
		if sql[i] < '0' || sql[i] > '9' {
			i++
			continue
		}
		j := i
		for j < len(sql) && sql[j] >= '0' && sql[j] <= '9' {
			j++
		}
		// A run of digits standing alone: not inside a word (t2, $1), not
		// followed by one (00B0, 1e5, 0x1F) or by a fraction point.
		if (i == 0 || !isWordByte(sql[i-1])) && (j == len(sql) || !isWordByte(sql[j]) && sql[j] != '.') {
			dst = append(dst, sql[done:i]...)
			dst = append(dst, '0')
			done = j
		}
		i = j
	}
	return append(dst, sql[done:]...)
}

func isWordByte(c byte) bool {
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z' || c >= 0x80
}
