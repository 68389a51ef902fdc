package querylog

import (
	"math/rand/v2"
	"testing"
)

// zeroNumbersByByte is the first ZeroNumbers, copying a byte at a time:
// the reference the faster one must agree with.
func zeroNumbersByByte(dst, sql []byte) []byte {
	for i := 0; i < len(sql); {
		j := i
		for j < len(sql) && sql[j] >= '0' && sql[j] <= '9' {
			j++
		}
		if j > i && (i == 0 || !isWordByte(sql[i-1])) && (j == len(sql) || !isWordByte(sql[j]) && sql[j] != '.') {
			dst = append(dst, '0')
			i = j
			continue
		}
		if j == i {
			j++
		}
		dst = append(dst, sql[i:j]...)
		i = j
	}
	return dst
}

func TestZeroNumbersAgreesWithReference(t *testing.T) {
	alphabet := []byte("0123456789 .,$_'aeE\"x()=\xc3")
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := make([]byte, r.IntN(24))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		want := string(zeroNumbersByByte([]byte("keep:"), b))
		if got := string(ZeroNumbers([]byte("keep:"), b)); got != want {
			t.Fatalf("ZeroNumbers(%q) = %q, want %q", b, got, want)
		}
	}
}

func BenchmarkZeroNumbers(b *testing.B) {
	q := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;")
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = ZeroNumbers(buf[:0], q)
	}
}
