package inspect

// probeLUKS is not written yet.
func probeLUKS(s *src) (*finding, error) { return nil, nil }
