package route

// Chunk folds the statements a client sends with one server acquisition
// (a transaction's first messages, or statements outside one), in order,
// into what they mean for routing.
type Chunk struct {
	tx       txState
	reads    bool // a Read, or a read-only transaction's start
	writes   bool // a Write outside a read-only transaction
	inRWWork bool // a statement ran in the read-write transaction begun
}

type txState uint8

const (
	txNone txState = iota
	txReadOnly
	txReadWrite
)

// Add folds in one text's shape. defaultReadOnly is the session's
// default_transaction_read_only.
func (c *Chunk) Add(s Shape, defaultReadOnly bool) {
	for _, k := range s {
		switch k {
		case Write:
			if c.tx != txReadOnly {
				c.writes = true
			}
		case Read:
			if c.tx == txReadWrite {
				c.inRWWork = true
			}
			c.reads = true
		case BeginReadOnly:
			c.tx, c.reads = txReadOnly, true
		case Begin:
			if defaultReadOnly {
				c.tx, c.reads = txReadOnly, true
			} else {
				c.tx = txReadWrite
			}
		case SetReadOnly:
			if c.tx == txReadWrite && !c.inRWWork {
				c.tx, c.reads = txReadOnly, true
			}
		}
	}
}

// Unsure records something the chunk holds that pgguard cannot judge (a
// message it does not read, a function call by OID): the primary runs it.
func (c *Chunk) Unsure() { c.writes = true }

// ReplicaEligible reports whether a replica may run the chunk: it reads,
// writes nothing, and begins no read-write transaction.
func (c *Chunk) ReplicaEligible() bool {
	return c.reads && !c.writes && c.tx != txReadWrite
}

// OutsideTransaction reports whether the chunk leaves no transaction block
// open of its own making: its statements run in implicit transactions.
func (c *Chunk) OutsideTransaction() bool { return c.tx == txNone }

// MayWrite reports whether the chunk may write on the primary (read-your-
// writes then learns its commit position).
func (c *Chunk) MayWrite() bool { return c.writes }
