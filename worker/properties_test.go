package worker

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

var checkedAt = time.Date(2026, 11, 22, 8, 0, 0, 0, time.FixedZone("CET", 3600))

func TestProperties(t *testing.T) {
	qcow := &inspect.Report{Format: inspect.QCOW2, VirtualSize: 1 << 30,
		Details: &inspect.QCOW2Details{Version: 3, ClusterSize: 65536, CompressionType: "zlib", RefcountBits: 16}}
	backed := &inspect.Report{Format: inspect.QCOW2, VirtualSize: 1 << 30,
		Details:  &inspect.QCOW2Details{Version: 3, ClusterSize: 65536, CompressionType: "zlib", BackingFile: "/etc/passwd"},
		Problems: []inspect.Problem{{Code: inspect.CodeBackingFile, Detail: "x"}, {Code: inspect.CodeFormatMismatch, Detail: "y"}, {Code: inspect.CodeBackingFile, Detail: "z"}}}
	vmdk := &inspect.Report{Format: inspect.VMDK, VirtualSize: 5 << 20,
		Details: &inspect.VMDKDetails{CreateType: "streamOptimized", AdapterType: "buslogic", HWVersion: "4", Descriptor: "embedded",
			Extents: []inspect.VMDKExtent{{Access: "RW", Sectors: 10240, Type: "SPARSE", File: "d.vmdk"}}}}
	raw := &inspect.Report{Format: inspect.Raw, VirtualSize: 4096, Details: &inspect.RawDetails{
		PartitionTable: &inspect.PartitionTable{Scheme: "gpt", Partitions: []inspect.Partition{{Index: 1}, {Index: 2}}}}}
	unknown := &inspect.Report{Format: inspect.VHDX, VirtualSize: inspect.SizeUnknown}

	tests := []struct {
		name     string
		rep      *inspect.Report
		existing map[string]string
		opts     PropertyOptions
		want     map[string]string
		remove   []string
	}{
		{"clean qcow2", qcow, nil, PropertyOptions{Version: "1.2"}, map[string]string{
			"sidecar_status": "inspected", "sidecar_format": "qcow2", "sidecar_virtual_size": "1073741824",
			"sidecar_checked_at": "2026-11-22T07:00:00Z", "sidecar_version": "1.2",
			"sidecar_qcow2_version": "3", "sidecar_qcow2_cluster_size": "65536", "sidecar_qcow2_compression_type": "zlib",
			"sidecar_qcow2_refcount_bits": "16"}, nil},
		{"unsafe, problems once each, stale keys removed", backed,
			map[string]string{"sidecar_error": "old", "sidecar_vmdk_create_type": "x", "sidecar_converted_to": "keep", "hw_disk_bus": "virtio"},
			PropertyOptions{}, map[string]string{
				"sidecar_status": "unsafe", "sidecar_problems": "backing_file,format_mismatch", "sidecar_format": "qcow2",
				"sidecar_virtual_size": "1073741824", "sidecar_checked_at": "2026-11-22T07:00:00Z",
				"sidecar_qcow2_version": "3", "sidecar_qcow2_cluster_size": "65536", "sidecar_qcow2_compression_type": "zlib",
				"sidecar_qcow2_backing_file": "/etc/passwd"}, []string{"sidecar_error", "sidecar_vmdk_create_type"}},
		{"vmdk with Nova's names", vmdk, nil, PropertyOptions{Prefix: "gs_"}, map[string]string{
			"gs_status": "inspected", "gs_format": "vmdk", "gs_virtual_size": "5242880", "gs_checked_at": "2026-11-22T07:00:00Z",
			"gs_vmdk_create_type": "streamOptimized", "gs_vmdk_adapter_type": "buslogic", "gs_vmdk_hw_version": "4",
			"gs_vmdk_descriptor": "embedded", "gs_vmdk_extents_count": "1",
			"vmware_disktype": "streamOptimized", "vmware_adaptertype": "busLogic"}, nil},
		{"a person's vmware_adaptertype stays", vmdk, map[string]string{"vmware_adaptertype": "lsiLogic"}, PropertyOptions{}, map[string]string{
			"sidecar_status": "inspected", "sidecar_format": "vmdk", "sidecar_virtual_size": "5242880", "sidecar_checked_at": "2026-11-22T07:00:00Z",
			"sidecar_vmdk_create_type": "streamOptimized", "sidecar_vmdk_adapter_type": "buslogic", "sidecar_vmdk_hw_version": "4",
			"sidecar_vmdk_descriptor": "embedded", "sidecar_vmdk_extents_count": "1", "vmware_disktype": "streamOptimized"}, nil},
		{"overwrite replaces it", vmdk, map[string]string{"vmware_adaptertype": "lsiLogic"}, PropertyOptions{Overwrite: true}, map[string]string{
			"sidecar_status": "inspected", "sidecar_format": "vmdk", "sidecar_virtual_size": "5242880", "sidecar_checked_at": "2026-11-22T07:00:00Z",
			"sidecar_vmdk_create_type": "streamOptimized", "sidecar_vmdk_adapter_type": "buslogic", "sidecar_vmdk_hw_version": "4",
			"sidecar_vmdk_descriptor": "embedded", "sidecar_vmdk_extents_count": "1", "vmware_disktype": "streamOptimized", "vmware_adaptertype": "busLogic"}, nil},
		{"raw disk with a partition table", raw, nil, PropertyOptions{}, map[string]string{
			"sidecar_status": "inspected", "sidecar_format": "raw", "sidecar_virtual_size": "4096", "sidecar_checked_at": "2026-11-22T07:00:00Z",
			"sidecar_raw_partition_table": "gpt", "sidecar_raw_partitions": "2"}, nil},
		{"unknown size is absent", unknown, map[string]string{"sidecar_virtual_size": "1"}, PropertyOptions{}, map[string]string{
			"sidecar_status": "inspected", "sidecar_format": "vhdx", "sidecar_checked_at": "2026-11-22T07:00:00Z"}, []string{"sidecar_virtual_size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, remove := Properties(tt.rep, tt.existing, checkedAt, tt.opts)
			if !reflect.DeepEqual(set, tt.want) {
				t.Errorf("set\n got %v\nwant %v", set, tt.want)
			}
			if !reflect.DeepEqual(remove, tt.remove) {
				t.Errorf("remove %v, want %v", remove, tt.remove)
			}
		})
	}
}

func TestPropertiesClipLongValues(t *testing.T) {
	rep := &inspect.Report{Format: inspect.QCOW2, VirtualSize: 1, Details: &inspect.QCOW2Details{BackingFile: strings.Repeat("é", 300)}}
	set, _ := Properties(rep, nil, checkedAt, PropertyOptions{})
	if v := set["sidecar_qcow2_backing_file"]; len(v) > maxValueLen || !strings.HasPrefix(v, "éé") {
		t.Fatalf("value of %d bytes", len(v))
	}
}

func TestVMwareNames(t *testing.T) {
	for in, want := range map[string]string{"streamOptimized": "streamOptimized", "monolithicSparse": "sparse", "monolithicFlat": "preallocated",
		"twoGbMaxExtentFlat": "preallocated", "custom": ""} {
		if got := vmwareDiskType(in); got != want {
			t.Errorf("disk type %q → %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"ide": "ide", "buslogic": "busLogic", "lsilogic": "lsiLogic", "lsisas1068": "lsiLogicsas", "pvscsi": "paraVirtual", "legacyESX": ""} {
		if got := vmwareAdapterType(in); got != want {
			t.Errorf("adapter %q → %q, want %q", in, got, want)
		}
	}
}

func TestFailedProperties(t *testing.T) {
	set, remove := FailedProperties("glance said 503", map[string]string{"sidecar_format": "qcow2"}, checkedAt, PropertyOptions{Version: "v"})
	want := map[string]string{"sidecar_status": "failed", "sidecar_error": "glance said 503", "sidecar_checked_at": "2026-11-22T07:00:00Z", "sidecar_version": "v"}
	if !reflect.DeepEqual(set, want) || remove != nil {
		t.Fatalf("set %v remove %v", set, remove)
	}
}
