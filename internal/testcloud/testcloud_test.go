package testcloud

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestReadEnv(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "env"), []byte("A=1\nB=x=y\n\n# no\nC=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env, err := ReadEnv(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"A": "1", "B": "x=y", "C": ""}; !reflect.DeepEqual(env, want) {
		t.Fatalf("env %v, want %v", env, want)
	}
	if _, err := ReadEnv(t.TempDir()); err == nil {
		t.Fatal("a missing env file read without an error")
	}
	t.Setenv("GSC_CLOUD_DIR", dir)
	if Dir() != dir {
		t.Fatalf("Dir() = %q", Dir())
	}
}
