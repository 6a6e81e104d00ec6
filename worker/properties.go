// Package worker is the sidecar's job: for one image, wait until Glance has it active, decide
// whether it is ours to look at, introspect it (ranged reads, or one streaming pass when the
// store refuses ranges), and write what was found back to the image as properties.
//
// Start with [Properties], which maps an inspection report to the image properties operators
// and Nova read, and [Job], which runs the whole job for one image against a [Glance]. A [Pool]
// runs jobs for events and batches ([Pool.ProcessAll]); a [Reconciler] finds the images whose
// events never arrived; a [Census] counts what the sidecar recorded on a set of images.
package worker

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/glance-sidecar/glance-sidecar/inspect"
)

// Outcome is what a job concluded, written as <prefix>status.
type Outcome string

// Outcomes.
const (
	// OutcomeInspected: the image was introspected and is safe.
	OutcomeInspected Outcome = "inspected"
	// OutcomeUnsafe: the image was introspected and has problems.
	OutcomeUnsafe Outcome = "unsafe"
	// OutcomeFailed: the image could not be introspected; <prefix>error says why.
	OutcomeFailed Outcome = "failed"
)

// PropertyOptions say how findings become properties.
type PropertyOptions struct {
	// Prefix starts the sidecar's own property names (default "sidecar_").
	Prefix string
	// Overwrite lets Nova's own properties (vmware_disktype, vmware_adaptertype) replace what
	// a person set; by default they are only added when absent.
	Overwrite bool
	// Version is written as <prefix>version.
	Version string
}

func (o PropertyOptions) prefix() string {
	if o.Prefix == "" {
		return "sidecar_"
	}
	return o.Prefix
}

// maxValueLen bounds a property value: Glance sets no limit, but Nova copies image properties
// into instance metadata, which has one.
const maxValueLen = 255

// Properties returns the properties that record rep on an image whose current properties are
// existing, checked at now. Keys the sidecar owns are always set; Nova's own names are set only
// when the image does not have them (or PropertyOptions.Overwrite). The second result lists the
// sidecar's keys from an earlier check that no longer apply, to remove.
func Properties(rep *inspect.Report, existing map[string]string, now time.Time, opts PropertyOptions) (set map[string]string, remove []string) {
	p := opts.prefix()
	set = map[string]string{
		p + "format":     string(rep.Format),
		p + "checked_at": now.UTC().Format(time.RFC3339),
	}
	if opts.Version != "" {
		set[p+"version"] = opts.Version
	}
	if rep.Safe() {
		set[p+"status"] = string(OutcomeInspected)
	} else {
		set[p+"status"] = string(OutcomeUnsafe)
		codes := make([]string, 0, len(rep.Problems))
		for _, c := range rep.Codes() {
			codes = append(codes, string(c))
		}
		set[p+"problems"] = clip(strings.Join(codes, ","))
	}
	if rep.VirtualSize != inspect.SizeUnknown {
		set[p+"virtual_size"] = strconv.FormatInt(rep.VirtualSize, 10)
	}
	for k, v := range detailProperties(rep) {
		set[p+string(rep.Format)+"_"+k] = clip(v)
	}
	if d, ok := rep.Details.(*inspect.VMDKDetails); ok {
		nova := map[string]string{
			"vmware_disktype":    vmwareDiskType(d.CreateType),
			"vmware_adaptertype": vmwareAdapterType(d.AdapterType),
		}
		for k, v := range nova {
			if _, exists := existing[k]; v != "" && (!exists || opts.Overwrite) {
				set[k] = v
			}
		}
	}
	// What an earlier check wrote that this one does not: a problem list now empty, details of
	// a format the image no longer reads as, an error from a failed attempt.
	for k := range existing {
		if _, ok := set[k]; !ok && strings.HasPrefix(k, p) && ownedKey(k, p) {
			remove = append(remove, k)
		}
	}
	sort.Strings(remove)
	return set, remove
}

// FailedProperties records a job that could not introspect the image. What an earlier check
// found stays: a failure to read the image says nothing new about its content.
func FailedProperties(reason string, existing map[string]string, now time.Time, opts PropertyOptions) (set map[string]string, remove []string) {
	p := opts.prefix()
	set = map[string]string{
		p + "status":     string(OutcomeFailed),
		p + "error":      clip(reason),
		p + "checked_at": now.UTC().Format(time.RFC3339),
	}
	if opts.Version != "" {
		set[p+"version"] = opts.Version
	}
	return set, nil
}

// ownedKey says whether a key under the prefix is one the sidecar writes for an inspection, and
// so one it may remove when a later inspection does not write it again. Links between images
// (converted_from, converted_to) are never removed here.
func ownedKey(k, p string) bool {
	switch strings.TrimPrefix(k, p) {
	case "converted_from", "converted_to":
		return false
	}
	return true
}

// detailProperties flattens the format details into key → value: strings that are set,
// numbers that are not zero, booleans that are true; nested lists are summarised by count, a
// partition table by its scheme and partition count.
func detailProperties(rep *inspect.Report) map[string]string {
	if rep.Details == nil {
		return nil
	}
	b, err := json.Marshal(rep.Details)
	if err != nil {
		return nil
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	out := map[string]string{}
	for k, v := range m {
		switch v := v.(type) {
		case string:
			if v != "" {
				out[k] = v
			}
		case float64:
			if v != 0 {
				out[k] = strconv.FormatFloat(v, 'f', -1, 64)
			}
		case bool:
			if v {
				out[k] = "true"
			}
		case []any:
			if len(v) > 0 {
				out[k+"_count"] = strconv.Itoa(len(v))
			}
		case map[string]any:
			if k == "partition_table" {
				out[k] = fmt.Sprint(v["scheme"])
				if parts, ok := v["partitions"].([]any); ok {
					out["partitions"] = strconv.Itoa(len(parts))
				}
			}
		}
	}
	return out
}

// vmwareDiskType maps a VMDK createType to Nova's vmware_disktype.
func vmwareDiskType(createType string) string {
	switch strings.ToLower(createType) {
	case "streamoptimized":
		return "streamOptimized"
	case "monolithicsparse", "twogbmaxextentsparse", "vmfssparse", "sesparse":
		return "sparse"
	case "monolithicflat", "twogbmaxextentflat", "vmfs", "vmfsthin", "vmfsraw", "vmfsrdm", "vmfspassthroughrawdevicemap":
		return "preallocated"
	}
	return ""
}

// vmwareAdapterType maps ddb.adapterType to Nova's vmware_adaptertype.
func vmwareAdapterType(adapter string) string {
	switch strings.ToLower(adapter) {
	case "ide":
		return "ide"
	case "buslogic":
		return "busLogic"
	case "lsilogic":
		return "lsiLogic"
	case "lsilogicsas", "lsisas1068":
		return "lsiLogicsas"
	case "pvscsi", "paravirtual":
		return "paraVirtual"
	}
	return ""
}

func clip(s string) string {
	if len(s) <= maxValueLen {
		return s
	}
	return strings.ToValidUTF8(s[:maxValueLen], "")
}
