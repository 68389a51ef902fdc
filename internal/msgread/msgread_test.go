package msgread

import "testing"

func TestReader(t *testing.T) {
	r := Reader{B: []byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 'x', 'y'}}
	if r.U16() != 1 || r.U32() != 2 || r.U64() != 3 || string(r.Next(2)) != "xy" || r.Bad {
		t.Fatal("fields misread")
	}
	if r.U16() != 0 || !r.Bad || r.Next(0) != nil {
		t.Fatal("an overrun is not remembered")
	}
	if r := (Reader{B: []byte{1}}); r.Next(-1) != nil || !r.Bad {
		t.Fatal("a negative length reads")
	}
}
