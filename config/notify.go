package config

// Notify is the [notify] table: LISTEN/NOTIFY under transaction pooling.
type Notify struct {
	// Pooled makes pgguard serve LISTEN, UNLISTEN and UNLISTEN * of
	// transaction-mode clients on one listening server connection per
	// database, instead of pinning each listening client to a server
	// (pooled). Off: LISTEN pins, as in session mode.
	Pooled bool `toml:"pooled"`
	// ClientBuffer caps the bytes of notifications a client has not read
	// yet; a client past it is disconnected (client_buffer).
	ClientBuffer int `toml:"client_buffer"`
	// ReconnectEvery re-establishes a listening connection the upstream
	// closed (a Neon compute suspended) on this schedule even without
	// queries, which wakes the compute; "0": only before the next query or
	// LISTEN that reaches the upstream (reconnect_every).
	ReconnectEvery Duration `toml:"reconnect_every"`
}

func (v *validator) notify() {
	v.atLeast("notify.client_buffer", v.c.Notify.ClientBuffer, 1024)
	v.nonNegative("notify.reconnect_every", v.c.Notify.ReconnectEvery)
}
