package inspect

// probeISO is not written yet.
func probeISO(s *src) (*finding, error) { return nil, nil }

// ISODetails are the facts of an ISO 9660 or UDF image.
type ISODetails struct {
	PartitionTable *PartitionTable `json:"partition_table,omitempty"`
}
