package inspect

// probePartitions is not written yet.
func probePartitions(s *src) (*finding, error) { return nil, nil }

// PartitionTable describes an MBR or GPT.
type PartitionTable struct{}
