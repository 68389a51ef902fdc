package main

import "testing"

// TestFramerEveryChunking feeds a server's reply (ending in ReadyForQuery
// 'I') cut at every pair of points and checks that only the read holding the
// reply's last byte reports the server free, and that a Terminate is seen
// wherever it is cut.
func TestFramerEveryChunking(t *testing.T) {
	var reply []byte
	reply = append(reply, message('T', []byte("0123456789"))...)
	reply = append(reply, message('D', []byte("row"))...)
	reply = append(reply, message('C', []byte("SELECT 1\x00"))...)
	reply = append(reply, message('Z', []byte{'T'})...) // in a transaction: not free
	reply = append(reply, message('n', nil)...)
	reply = append(reply, message('Z', []byte{'I'})...)
	for i := 0; i <= len(reply); i++ {
		for j := i; j <= len(reply); j++ {
			var f framer
			parts := [][]byte{reply[:i], reply[i:j], reply[j:]}
			for k, p := range parts {
				if len(p) == 0 {
					continue
				}
				idle, term := f.scan(p)
				last := k == 2 || (k == 1 && j == len(reply)) || (k == 0 && i == len(reply))
				if idle != last {
					t.Fatalf("cuts %d,%d part %d: idle %v, want %v", i, j, k, idle, last)
				}
				if term {
					t.Fatalf("cuts %d,%d: Terminate seen in a reply", i, j)
				}
			}
		}
	}
	req := append(message('Q', []byte("SELECT 1\x00")), message('X', nil)...)
	for i := 1; i < len(req); i++ {
		var f framer
		_, t1 := f.scan(req[:i])
		_, t2 := f.scan(req[i:])
		if t1 || !t2 { // the header completes only with the last byte
			t.Fatalf("cut %d: Terminate seen %v then %v", i, t1, t2)
		}
	}
}
