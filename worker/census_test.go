package worker

import (
	"reflect"
	"testing"

	"github.com/glance-sidecar/glance-sidecar/glanceclient"
)

func TestCensus(t *testing.T) {
	images := []glanceclient.Image{
		{ID: "a", Owner: "p", Properties: map[string]string{"gs_status": "inspected", "gs_format": "qcow2"}},
		{ID: "b", Owner: "q", DiskFormat: "raw", Properties: map[string]string{"gs_status": "unsafe", "gs_format": "qcow2", "gs_problems": "backing_file,format_mismatch"}},
		{ID: "c", Owner: "p", Hidden: true, Properties: map[string]string{"gs_status": "unsafe", "gs_format": "vmdk", "gs_problems": "vmdk_create_type"}},
		{ID: "d", Owner: "p", Properties: map[string]string{"gs_status": "failed", "gs_error": "checksum mismatch"}},
		{ID: "e", Owner: "p", Properties: map[string]string{"sidecar_status": "inspected"}}, // another prefix
	}
	c := NewCensus()
	for i := range images {
		c.Add(ReadFindings(&images[i], PropertyOptions{Prefix: "gs_"}))
	}
	want := &Census{
		Images:   5,
		Outcomes: map[Outcome]int{OutcomeInspected: 1, OutcomeUnsafe: 2, OutcomeFailed: 1, NotChecked: 1},
		Formats:  map[string]int{"qcow2": 2, "vmdk": 1, NotChecked: 2},
		Problems: map[string]int{"backing_file": 1, "format_mismatch": 1, "vmdk_create_type": 1},
		Unsafe: []Findings{
			{ImageID: "b", Owner: "q", DiskFormat: "raw", Outcome: OutcomeUnsafe, Format: "qcow2", Problems: []string{"backing_file", "format_mismatch"}},
			{ImageID: "c", Owner: "p", Hidden: true, Outcome: OutcomeUnsafe, Format: "vmdk", Problems: []string{"vmdk_create_type"}},
		},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("census\n%+v\nwant\n%+v", c, want)
	}
	if f := ReadFindings(&images[3], PropertyOptions{Prefix: "gs_"}); f.Error != "checksum mismatch" || f.Problems == nil || len(f.Problems) != 0 {
		t.Fatalf("failed image: %+v", f)
	}
}
