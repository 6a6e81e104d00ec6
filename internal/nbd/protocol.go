package nbd

// The numbers of the NBD protocol (NetworkBlockDevice/nbd, doc/proto.md) this server speaks:
// the fixed newstyle handshake and simple replies. All fields are big-endian on the wire.

// Magic numbers.
const (
	magicInit        = 0x4e42444d41474943 // "NBDMAGIC", first thing the server sends
	magicOpt         = 0x49484156454f5054 // "IHAVEOPT", in the greeting and before every option
	magicOptReply    = 0x0003e889045565a9 // before every option reply
	magicRequest     = 0x25609513         // before every transmission request
	magicSimpleReply = 0x67446698         // before every simple reply
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes       = 1 << 1 // NBD_FLAG_NO_ZEROES
	flagCFixedNewstyle = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	flagCNoZeroes      = 1 << 1 // NBD_FLAG_C_NO_ZEROES
)

// Transmission flags: what the export supports.
const (
	flagHasFlags        = 1 << 0 // NBD_FLAG_HAS_FLAGS, always set
	flagReadOnly        = 1 << 1 // NBD_FLAG_READ_ONLY
	flagSendFlush       = 1 << 2 // NBD_FLAG_SEND_FLUSH
	flagSendWriteZeroes = 1 << 6 // NBD_FLAG_SEND_WRITE_ZEROES
)

// Options (NBD_OPT_*).
const (
	optExportName         = 1
	optAbort              = 2
	optList               = 3
	optStartTLS           = 5
	optInfo               = 6
	optGo                 = 7
	optStructuredReply    = 8
	optListMetaContext    = 9
	optSetMetaContext     = 10
	optExtendedHeaders    = 11
	optReplyAck           = 1         // NBD_REP_ACK
	optReplyServer        = 2         // NBD_REP_SERVER
	optReplyInfo          = 3         // NBD_REP_INFO
	optReplyErrUnsup      = 1<<31 + 1 // NBD_REP_ERR_UNSUP
	optReplyErrInvalid    = 1<<31 + 3 // NBD_REP_ERR_INVALID
	optReplyErrUnknown    = 1<<31 + 6 // NBD_REP_ERR_UNKNOWN
	infoExport            = 0         // NBD_INFO_EXPORT
	infoBlockSize         = 3         // NBD_INFO_BLOCK_SIZE
	exportNameReplyZeroes = 124       // zero padding after NBD_OPT_EXPORT_NAME's reply
)

// Commands (NBD_CMD_*) and their flags.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
	cmdFlagFUA     = 1 << 0
	cmdFlagNoHole  = 1 << 1
)

// Errors in simple replies (NBD_E*).
const (
	errPerm  = 1
	errIO    = 5
	errInval = 22
	errNoSpc = 28
)

// Sizes of fixed-length messages.
const (
	optHeaderLen     = 16 // magic, option, length
	requestHeaderLen = 28 // magic, flags, type, cookie, offset, length
	replyHeaderLen   = 16 // magic, error, cookie
)

// Bounds on what a client may send.
const (
	// MaxRequest is the largest READ, WRITE or WRITE_ZEROES length accepted (32 MiB, the most
	// any client should send without asking). It is the maximum block size the server
	// advertises.
	MaxRequest = 32 << 20
	// MaxOptionLen is the largest option payload accepted during the handshake (4 KiB, the
	// longest string the protocol allows).
	MaxOptionLen = 4096
)

// The other block sizes advertised: any export backed by a file or a stream is
// byte-addressable, and 4 KiB is the usual page. maxOptions bounds the options of one
// handshake (qemu sends two).
const (
	minBlock       = 1
	preferredBlock = 4096
	maxOptions     = 64
)

// cmdName names a command for logs and errors.
func cmdName(typ uint16) string {
	switch typ {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return "unknown"
}

// optName names an option for logs and errors.
func optName(opt uint32) string {
	switch opt {
	case optExportName:
		return "EXPORT_NAME"
	case optAbort:
		return "ABORT"
	case optList:
		return "LIST"
	case optStartTLS:
		return "STARTTLS"
	case optInfo:
		return "INFO"
	case optGo:
		return "GO"
	case optStructuredReply:
		return "STRUCTURED_REPLY"
	case optListMetaContext:
		return "LIST_META_CONTEXT"
	case optSetMetaContext:
		return "SET_META_CONTEXT"
	case optExtendedHeaders:
		return "EXTENDED_HEADERS"
	}
	return "unknown"
}
