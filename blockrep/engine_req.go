package blockrep

// reqEngine is the replicated write path's per-request state; it lives inside Request so
// that the hot path allocates nothing.
type reqEngine struct{}
