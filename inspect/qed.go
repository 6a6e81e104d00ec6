package inspect

// probeQED is not written yet.
func probeQED(s *src) (*finding, error) { return nil, nil }
