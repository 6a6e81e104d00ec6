package inspect

import (
	"errors"
	"fmt"
	"strings"
)

// probe recognises one format. It returns nil when the content is not that format, and
// otherwise a finding, possibly with an error from src (truncated, errBehind) that decide turns
// into a problem.
type probe struct {
	name string
	fn   func(s *src) (*finding, error)
}

// probes run on every image, in this order; when several formats match, the first is
// reported as the format. The partition-table probe comes last: an MBR or GPT is a detail of a
// raw disk (or of a hybrid ISO), never a format of its own.
var probes = []probe{
	{"qcow2", probeQCOW},
	{"qed", probeQED},
	{"vmdk", probeVMDK},
	{"vhdx", probeVHDX},
	{"vhd", probeVHD},
	{"vdi", probeVDI},
	{"luks", probeLUKS},
	{"ploop", probePloop},
	{"iso", probeISO},
	{"partitions", probePartitions},
}

// finding is what one probe found.
type finding struct {
	format   Format // "" for the partition-table probe
	vsize    int64
	problems []Problem
	details  any
}

func newFinding(f Format, details any) *finding {
	return &finding{format: f, vsize: SizeUnknown, details: details}
}

func (f *finding) add(c Code, format string, args ...any) {
	f.problems = append(f.problems, Problem{Code: c, Detail: fmt.Sprintf(format, args...)})
}

type result struct {
	f   *finding
	err error
}

func run(p probe, b backend) (*finding, error) {
	return p.fn(newSrc(b))
}

// settle turns a probe's closing error into a problem on its finding.
func settle(r result, name string) *finding {
	f := r.f
	if f == nil {
		return nil
	}
	switch {
	case r.err == nil:
	case isTruncated(r.err):
		f.add(CodeTruncated, "%s: %v", name, r.err)
	case errors.Is(r.err, errBehind):
		f.add(CodeInvalidHeader, "%s: a structure points before data already read, or needs more reads than allowed", name)
	default:
		f.add(CodeInvalidHeader, "%s: %v", name, r.err)
	}
	return f
}

// decide combines the probes' findings into the Report.
func decide(ps []probe, results []result, size int64, declared Format) *Report {
	var matches []*finding
	var parts *finding
	for i, r := range results {
		f := settle(r, ps[i].name)
		switch {
		case f == nil:
		case f.format == "":
			parts = f
		default:
			matches = append(matches, f)
		}
	}
	rep := &Report{Size: size, VirtualSize: SizeUnknown}
	switch {
	case len(matches) == 0:
		rd := &RawDetails{}
		rep.Format = Raw
		rep.VirtualSize = size
		if parts != nil {
			rd.PartitionTable, _ = parts.details.(*PartitionTable)
			rep.Problems = append(rep.Problems, parts.problems...)
		}
		rep.Details = rd
	default:
		m := matches[0]
		rep.Format = m.format
		rep.VirtualSize = m.vsize
		rep.Details = m.details
		rep.Problems = append(rep.Problems, m.problems...)
		if len(matches) > 1 {
			names := make([]string, len(matches))
			for i, o := range matches {
				names[i] = string(o.format)
				rep.Formats = append(rep.Formats, o.format)
			}
			rep.Problems = append(rep.Problems, Problem{CodeMultipleFormats,
				"content is valid as " + strings.Join(names, " and ") + " at once"})
		}
		if iso, ok := m.details.(*ISODetails); ok && parts != nil {
			iso.PartitionTable, _ = parts.details.(*PartitionTable)
			rep.Problems = append(rep.Problems, parts.problems...)
		}
	}
	if declared != "" && declared != rep.Format {
		rep.Problems = append(rep.Problems, Problem{CodeFormatMismatch,
			fmt.Sprintf("declared %s, content is %s", declared, rep.Format)})
	}
	return rep
}

// RawDetails are the facts about a raw image.
type RawDetails struct {
	// PartitionTable is the MBR or GPT found at the start of the disk, if any.
	PartitionTable *PartitionTable `json:"partition_table,omitempty"`
}
