package lease

// WithoutFsync makes g skip fsync, for tests that write thousands of grants
// to check the decision logic, not durability.
func WithoutFsync(g *Granter) *Granter {
	g.skipFsync = true
	return g
}
