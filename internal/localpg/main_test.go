package localpg

import (
	"os"
	"testing"
)

// pg is the cluster the tests in this package share.
var pg *Cluster

// testPassword has characters that need quoting in SQL and URLs.
const testPassword = `s3cret 'pw" @/:%`

func TestMain(m *testing.M) {
	os.Exit(Main(m, Options{User: "tester", Password: testPassword, Database: "app"}, &pg))
}
