package main

// A minimal JSON scanner for the gateway's server frames: it walks the structure
// (objects, arrays, strings with escapes, numbers, literals) and reads only the keys the
// benchmark needs, at the level where they belong. An event's `payload` is an arbitrary
// object whose keys may be "priority", "timestamp" or "symbol" too: it is skipped as a
// whole, never searched. Nothing is allocated unless a string that must be compared or
// kept contains an escape (the gateway never writes one in those fields).
//
// encoding/json with reflection would do the same work several times slower (see
// BenchmarkScanBatch / BenchmarkEncodingJSONBatch in scan_test.go).

import (
	"bytes"
	"errors"
	"strconv"
	"unicode/utf8"
)

var errSyntax = errors.New("bad JSON")

// Frame kinds (the top-level "type").
const (
	kindOther = iota
	kindEvent
	kindBatch
	kindPing
	kindStatus
	kindError
)

// Priorities, in the order of the result's lat_us keys.
const (
	prioNone       = -1
	prioCritical   = 0
	prioHigh       = 1
	prioStandard   = 2
	prioBackground = 3
)

var prioNames = [4]string{"critical", "high", "standard", "background"}

// eventInfo: the four fields read from an event object.
type eventInfo struct {
	prio  int
	ts    int64
	id    []byte // event_id, raw string contents
	idEsc bool
	end   bool // symbol == "ENDMARK"
}

// frameInfo: what the benchmark reads of one server frame. Reused from frame to frame
// (one per connection), so parsing allocates nothing.
type frameInfo struct {
	kind       int
	hasType    bool
	subscribed bool // "state": "subscribed"
	conflated  bool
	code       []byte // "code" (error frames), raw string contents
	codeEsc    bool
	codeNull   bool
	hasEv      bool      // an "event" object (not null) was read into ev
	ev         eventInfo // the "event" of an event frame
	evs        []byte    // the "events" array, when it came before "type"
	item       eventInfo // the current batch item's event
}

// itemFunc receives each event of a frame (an event frame's, or a batch's items in
// order) with its "conflated" flag; e is only valid during the call.
type itemFunc func(e *eventInfo, conflated bool) error

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// scanString: b[i] is the opening quote. Returns the contents' span, whether it holds
// an escape, and the index after the closing quote.
func scanString(b []byte, i int) (start, end int, esc bool, next int, err error) {
	start = i + 1
	j := start
	for {
		q := bytes.IndexByte(b[j:], '"')
		if q < 0 {
			return 0, 0, false, 0, errSyntax
		}
		q += j
		k := q // an odd run of backslashes before the quote escapes it
		for k > start && b[k-1] == '\\' {
			k--
		}
		if (q-k)%2 == 0 {
			return start, q, bytes.IndexByte(b[start:q], '\\') >= 0, q + 1, nil
		}
		j = q + 1
	}
}

// structural: the bytes skipValue stops at inside an object or array.
var structural = [256]bool{'"': true, '{': true, '}': true, '[': true, ']': true}

// skipValue: the index after the value starting at b[i] (after spaces).
func skipValue(b []byte, i int) (int, error) {
	i = skipSpace(b, i)
	if i >= len(b) {
		return 0, errSyntax
	}
	switch c := b[i]; c {
	case '"':
		_, _, _, next, err := scanString(b, i)
		return next, err
	case '{', '[':
		// Nested objects and arrays: count depth, skip strings (they may hold brackets
		// and escaped quotes); the structure inside is not validated further.
		depth := 0
		for j := i; j < len(b); j++ {
			for j < len(b) && !structural[b[j]] {
				j++
			}
			if j == len(b) {
				break
			}
			switch b[j] {
			case '"':
				_, _, _, next, err := scanString(b, j)
				if err != nil {
					return 0, err
				}
				j = next - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errSyntax
	case 't':
		return literal(b, i, "true")
	case 'f':
		return literal(b, i, "false")
	case 'n':
		return literal(b, i, "null")
	default:
		if c == '-' || (c >= '0' && c <= '9') {
			j := i + 1
			for j < len(b) && (b[j] >= '0' && b[j] <= '9' || b[j] == '.' || b[j] == 'e' ||
				b[j] == 'E' || b[j] == '+' || b[j] == '-') {
				j++
			}
			return j, nil
		}
		return 0, errSyntax
	}
}

func literal(b []byte, i int, lit string) (int, error) {
	if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
		return i + len(lit), nil
	}
	return 0, errSyntax
}

// strIs: the raw string contents b (escaped if esc) equal s.
func strIs(b []byte, esc bool, s string) bool {
	if !esc {
		return string(b) == s // no allocation: compared in place (and inlined)
	}
	return escapedIs(b, s)
}

//go:noinline
func escapedIs(b []byte, s string) bool {
	u, ok := unescape(b)
	return ok && string(u) == s
}

// unescape: JSON string contents -> their UTF-8 bytes (allocates; rare path).
func unescape(b []byte) ([]byte, bool) {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(b) {
			return nil, false
		}
		switch b[i] {
		case '"', '\\', '/':
			out = append(out, b[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := hex4(b, i+1)
			if !ok {
				return nil, false
			}
			i += 4
			if r >= 0xD800 && r < 0xDC00 && i+6 < len(b) && b[i+1] == '\\' && b[i+2] == 'u' {
				if r2, ok := hex4(b, i+3); ok && r2 >= 0xDC00 && r2 < 0xE000 {
					r = (r-0xD800)<<10 + (r2 - 0xDC00) + 0x10000
					i += 6
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, false
		}
	}
	return out, true
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// object walks the object at b[i] (after spaces), calling field(key, keyEsc, valueAt)
// for each member; field returns the index after the value. Returns the index after
// the object.
func object(b []byte, i int, field func(key []byte, esc bool, at int) (int, error)) (int, error) {
	i, empty, err := opening(b, skipSpace(b, i), '{', '}')
	if err != nil || empty {
		return i, err
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, errSyntax
		}
		ks, ke, kesc, next, err := scanString(b, i)
		if err != nil {
			return 0, err
		}
		i = skipSpace(b, next)
		if i >= len(b) || b[i] != ':' {
			return 0, errSyntax
		}
		i, err = field(b[ks:ke], kesc, skipSpace(b, i+1))
		if err != nil {
			return 0, err
		}
		var done bool
		if i, done, err = afterMember(b, i, '}'); err != nil || done {
			return i, err
		}
	}
}

// opening: past the opening bracket at i (and spaces): the start of the first member, or
// the index after the closing bracket and empty.
func opening(b []byte, i int, open, closing byte) (int, bool, error) {
	if i >= len(b) || b[i] != open {
		return 0, false, errSyntax
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == closing {
		return i + 1, true, nil
	}
	return i, false, nil
}

// afterMember: past the separator after an object member or array element at i: the
// index after the closing bracket and done, or the start of the next one.
func afterMember(b []byte, i int, closing byte) (int, bool, error) {
	i = skipSpace(b, i)
	if i >= len(b) {
		return 0, false, errSyntax
	}
	if b[i] == closing {
		return i + 1, true, nil
	}
	if b[i] != ',' {
		return 0, false, errSyntax
	}
	return skipSpace(b, i+1), false, nil
}

// stringOrNull: a string value's contents (null: isNull).
func stringOrNull(b []byte, i int) (s []byte, esc, isNull bool, next int, err error) {
	if i < len(b) && b[i] == '"' {
		st, en, e, nx, err := scanString(b, i)
		if err != nil {
			return nil, false, false, 0, err
		}
		return b[st:en], e, false, nx, nil
	}
	next, err = literal(b, i, "null")
	return nil, false, true, next, err
}

func boolValue(b []byte, i int) (bool, int, error) {
	if i < len(b) && b[i] == 't' {
		n, err := literal(b, i, "true")
		return true, n, err
	}
	n, err := literal(b, i, "false")
	return false, n, err
}

// parseFrame reads a server frame into f and passes its events to fn, in one pass
// over the bytes when "type" comes first (as the gateway writes it). Event frames'
// events are passed once the whole frame has been read (their "conflated" may follow).
func parseFrame(b []byte, f *frameInfo, fn itemFunc) error {
	f.kind, f.hasType, f.subscribed, f.conflated = kindOther, false, false, false
	f.code, f.codeEsc, f.codeNull, f.hasEv, f.evs = nil, false, false, false, nil
	end, err := object(b, 0, func(key []byte, esc bool, at int) (int, error) {
		switch {
		case keyIs(key, esc, "type"):
			s, sesc, _, next, err := stringOrNull(b, at)
			if err != nil || s == nil {
				return 0, errSyntax // "type" is a required string
			}
			f.hasType = true
			switch {
			case strIs(s, sesc, "event"):
				f.kind = kindEvent
			case strIs(s, sesc, "batch"):
				f.kind = kindBatch
			case strIs(s, sesc, "ping"):
				f.kind = kindPing
			case strIs(s, sesc, "status"):
				f.kind = kindStatus
			case strIs(s, sesc, "error"):
				f.kind = kindError
			default:
				f.kind = kindOther
			}
			return next, nil
		case keyIs(key, esc, "state"):
			s, sesc, _, next, err := stringOrNull(b, at)
			f.subscribed = s != nil && strIs(s, sesc, "subscribed")
			return next, err
		case keyIs(key, esc, "conflated"):
			v, next, err := boolValue(b, at)
			f.conflated = v
			return next, err
		case keyIs(key, esc, "code"):
			s, sesc, isNull, next, err := stringOrNull(b, at)
			f.code, f.codeEsc, f.codeNull = s, sesc, isNull
			return next, err
		case keyIs(key, esc, "event"):
			if at < len(b) && b[at] == 'n' {
				f.hasEv = false
				return literal(b, at, "null")
			}
			f.hasEv = true
			return parseEvent(b, at, &f.ev)
		case keyIs(key, esc, "events"):
			if f.hasType && f.kind == kindBatch {
				return items(b, at, f, fn)
			}
			next, err := skipValue(b, at) // "type" not seen yet: read it after
			if err != nil {
				return 0, err
			}
			f.evs = b[at:next]
			return next, nil
		}
		return skipValue(b, at)
	})
	if err != nil {
		return err
	}
	if !f.hasType || skipSpace(b, end) != len(b) {
		return errSyntax
	}
	switch {
	case f.kind == kindEvent && f.hasEv:
		return fn(&f.ev, f.conflated)
	case f.kind == kindBatch && f.evs != nil:
		_, err = items(f.evs, 0, f, fn)
	}
	return err
}

func keyIs(key []byte, esc bool, s string) bool { return strIs(key, esc, s) }

// parseEvent reads the event object at b[i] (priority, timestamp, event_id, symbol;
// everything else, the payload included, is skipped whole) into e. Returns the index
// after the object.
func parseEvent(b []byte, i int, e *eventInfo) (int, error) {
	*e = eventInfo{prio: prioNone}
	return object(b, i, func(key []byte, esc bool, at int) (int, error) {
		switch {
		case keyIs(key, esc, "priority"):
			s, sesc, _, next, err := stringOrNull(b, at)
			e.prio = prioNone
			if s != nil {
				for p, name := range prioNames {
					if strIs(s, sesc, name) {
						e.prio = p
						break
					}
				}
			}
			return next, err
		case keyIs(key, esc, "timestamp"):
			v, next, err := intValue(b, at)
			e.ts = v
			return next, err
		case keyIs(key, esc, "event_id"):
			s, sesc, isNull, next, err := stringOrNull(b, at)
			if isNull {
				return 0, errSyntax // a str field
			}
			e.id, e.idEsc = s, sesc
			return next, err
		case keyIs(key, esc, "symbol"):
			s, sesc, _, next, err := stringOrNull(b, at)
			e.end = s != nil && strIs(s, sesc, "ENDMARK")
			return next, err
		}
		return skipValue(b, at)
	})
}

// intValue: an integer (no fraction, no exponent).
func intValue(b []byte, i int) (int64, int, error) {
	j := i
	if j < len(b) && b[j] == '-' {
		j++
	}
	d := j
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	if j == d || (j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E')) {
		return 0, 0, errSyntax
	}
	var v int64
	for _, c := range b[d:j] {
		v = v*10 + int64(c-'0')
	}
	if d > i {
		v = -v
	}
	return v, j, nil
}

// items reads a batch's "events" array at b[i] (or null) and passes each item's event
// that is not null to fn, with the item's "conflated". Returns the index after it.
func items(b []byte, i int, f *frameInfo, fn itemFunc) (int, error) {
	if i < len(b) && b[i] == 'n' {
		return literal(b, i, "null")
	}
	i, empty, err := opening(b, i, '[', ']')
	if err != nil || empty {
		return i, err
	}
	for {
		hasEv, conflated := false, false
		next, err := object(b, i, func(key []byte, esc bool, at int) (int, error) {
			switch {
			case keyIs(key, esc, "event"):
				if at < len(b) && b[at] == 'n' {
					hasEv = false
					return literal(b, at, "null")
				}
				hasEv = true
				return parseEvent(b, at, &f.item)
			case keyIs(key, esc, "conflated"):
				v, n, err := boolValue(b, at)
				conflated = v
				return n, err
			}
			return skipValue(b, at)
		})
		if err != nil {
			return 0, err
		}
		if hasEv {
			if err := fn(&f.item, conflated); err != nil {
				return 0, err
			}
		}
		var done bool
		if i, done, err = afterMember(b, next, ']'); err != nil || done {
			return i, err
		}
	}
}

// codeString: the error frame's code as Python's bench client prints it.
func codeString(f *frameInfo) string {
	if f.code == nil {
		return "None"
	}
	if f.codeEsc {
		if u, ok := unescape(f.code); ok {
			return string(u)
		}
		return strconv.Quote(string(f.code))
	}
	return string(f.code)
}
