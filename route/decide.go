// Package route chooses the upstream of a client's work: the primary or one
// of its read replicas. It holds the one decision function the proxy calls
// when a transaction (or a statement outside one) needs a server (Decide),
// the classification of SQL it decides from (Classify, Chunk), and the
// read-your-writes positions it compares (Positions). It opens no
// connection and sends no query: the proxy measures replicas on
// connections its clients' traffic opened.
package route

import "time"

// ReplicaView is what the proxy knows of one replica when it decides.
type ReplicaView struct {
	// Up is false while the replica fails (dials or connections lost).
	Up bool
	// Lagging: the last measurement found it further behind than
	// replica.max_lag_bytes.
	Lagging bool
	// Replayed is the newest replay position measured on it.
	Replayed LSN
	// Measured is when Replayed was measured (zero: never).
	Measured time.Time
}

// Input is what one decision is made from.
type Input struct {
	// ReadOnly: the work is read-only (Chunk.ReplicaEligible) and the
	// client's routing sends read-only work to replicas.
	ReadOnly bool
	// Pending: a write of the client's read-your-writes scope has
	// committed but its position is not known yet.
	Pending bool
	// Need is the newest position the scope's writes reached (0: none).
	Need     LSN
	Replicas []ReplicaView
	Now      time.Time
	// Remeasure is how old a measurement may get before the next read
	// routed to the replica measures it again (on the read's connection).
	Remeasure time.Duration
	// Seed spreads reads over the replicas (round robin).
	Seed uint32
}

// Decision is where the work goes.
type Decision struct {
	// Replica is the index of the chosen replica, or -1 for the primary.
	Replica int
	// Check: before the work runs, measure the replica's replay position
	// on the connection it gets, and run the work there only if it is at
	// least Need (else wait up to replica.ryw_wait, then the primary).
	Check bool
	// Why names the reason, for metrics: "replica", or why the primary:
	// "not_read_only", "ryw_pending", "replicas_down", "replicas_lagging".
	Why string
}

// Primary is the decision to use the primary.
func Primary(why string) Decision { return Decision{Replica: -1, Why: why} }

// Decide chooses the upstream of one unit of work. It is the only place
// where primary and replica are chosen between; failover to the fallback
// is the primary's own (package failover).
func Decide(in Input) Decision {
	if !in.ReadOnly {
		return Primary("not_read_only")
	}
	if in.Pending {
		return Primary("ryw_pending")
	}
	n := len(in.Replicas)
	up, remeasure := 0, -1
	for k := 0; k < n; k++ {
		i := (int(in.Seed) + k) % n
		r := in.Replicas[i]
		if !r.Up {
			continue
		}
		up++
		stale := r.Measured.IsZero() || in.Now.Sub(r.Measured) >= in.Remeasure
		if r.Lagging {
			if stale && remeasure < 0 {
				remeasure = i
			}
			continue
		}
		return Decision{Replica: i, Check: stale || in.Need > r.Replayed, Why: "replica"}
	}
	if remeasure >= 0 {
		// A lagging replica is measured again on a read's connection; the
		// read goes to the primary if it is still behind.
		return Decision{Replica: remeasure, Check: true, Why: "replica"}
	}
	if up == 0 {
		return Primary("replicas_down")
	}
	return Primary("replicas_lagging")
}
