package dashboard

// Latest returns the newest sample (zero before the first): the fleet's
// heartbeat takes its qps and p95 from it.
func (d *Dashboard) Latest() Point {
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.next - 1
	if i < 0 {
		if !s.full {
			return Point{}
		}
		i = len(s.ring) - 1
	}
	return s.ring[i]
}
