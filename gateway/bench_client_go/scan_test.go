package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// An event whose payload holds keys named like the ones read, strings with escaped
// quotes and brackets, and nested objects and arrays: none of it may be taken for the
// event's own fields.
const trickyEvent = `{"event_type":"MARGIN_CALL","payload":{"priority":"background",` +
	`"timestamp":5,"symbol":"ENDMARK","event_id":"not-me","note":"a \"quoted\" } ] {` +
	` string \\","nested":{"priority":"high","list":[1,{"timestamp":7},"x\"y",[]],` +
	`"symbol":null},"n":-1.5e3,"ok":true,"none":null},"symbol":"SYM1","account":"ACC1",` +
	`"event_id":"0190-abc","correlation_id":"0190-abc","priority":"critical",` +
	`"timestamp":1700000000123456789,"source":"bench","version":1}`

type got struct {
	prio int
	ts   int64
	id   string
	end  bool
	conf bool
}

// parse: the events parseFrame passes on, in order.
func parse(t *testing.T, raw string, f *frameInfo) []got {
	t.Helper()
	var all []got
	err := parseFrame([]byte(raw), f, func(e *eventInfo, conflated bool) error {
		all = append(all, got{e.prio, e.ts, string(e.id), e.end, conflated})
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return all
}

func expect(t *testing.T, all, want []got) {
	t.Helper()
	if len(all) != len(want) {
		t.Fatalf("events: %+v, want %+v", all, want)
	}
	for i := range want {
		if all[i] != want[i] {
			t.Fatalf("event %d: %+v, want %+v", i, all[i], want[i])
		}
	}
}

func TestParseFrameEvent(t *testing.T) {
	var f frameInfo
	all := parse(t, `{"type":"event","conflated":true,"pattern":"risk.>","stream":"TM_CRITICAL",`+
		`"seq":12,"event":`+trickyEvent+`}`, &f)
	if f.kind != kindEvent {
		t.Fatalf("frame: %+v", f)
	}
	expect(t, all, []got{{prioCritical, 1700000000123456789, "0190-abc", false, true}})
	// "conflated" after the event, "type" last: still read.
	all = parse(t, `{"event":`+trickyEvent+`,"conflated":true,"type":"event"}`, &f)
	expect(t, all, []got{{prioCritical, 1700000000123456789, "0190-abc", false, true}})
	// The same frame object reused: nothing left over from the previous frame.
	all = parse(t, `{"type":"event","event":null}`, &f)
	expect(t, all, nil)
	all = parse(t, `{"type":"status","state":"subscribed","event":`+trickyEvent+`}`, &f)
	expect(t, all, nil)
}

func TestPayloadAfterFieldsDoesNotOverride(t *testing.T) {
	// The payload after the real fields (key order is the encoder's, not a promise).
	raw := `{"priority":"high","timestamp":42,"event_id":"e1","symbol":"ENDMARK",` +
		`"payload":{"priority":"critical","timestamp":1,"symbol":"X","event_id":"e2"}}`
	var e eventInfo
	if _, err := parseEvent([]byte(raw), 0, &e); err != nil {
		t.Fatal(err)
	}
	if e.prio != prioHigh || e.ts != 42 || string(e.id) != "e1" || !e.end {
		t.Fatalf("event: %+v", e)
	}
}

func TestBatch(t *testing.T) {
	events := `[` +
		`{"type":"event","pattern":"p","stream":"s","seq":1,"event":` + trickyEvent + `},` +
		`{"type":"event","conflated":true,"pattern":"p","stream":"s","seq":2,"event":` +
		`{"payload":{"symbol":"ENDMARK"},"priority":"standard","timestamp":-3,"event_id":"b"}},` +
		`{"type":"event","event":null},` +
		`{"event":{"symbol":"ENDMARK","priority":"critical","timestamp":9,` +
		`"event_id":"z"},"conflated":true}]`
	want := []got{
		{prioCritical, 1700000000123456789, "0190-abc", false, false},
		{prioStandard, -3, "b", false, true},
		{prioCritical, 9, "z", true, true},
	}
	var f frameInfo
	expect(t, parse(t, `{"type":"batch","events":`+events+`}`, &f), want)
	if f.kind != kindBatch {
		t.Fatalf("frame: %+v", f)
	}
	// "type" after "events"
	expect(t, parse(t, `{"events":`+events+`,"type":"batch"}`, &f), want)
	expect(t, parse(t, `{"type":"batch","events":[]}`, &f), nil)
	// events of a frame that is not a batch are not events
	expect(t, parse(t, `{"type":"other","events":`+events+`}`, &f), nil)
}

func TestControlFrames(t *testing.T) {
	cases := []struct {
		raw        string
		kind       int
		subscribed bool
		code       string
	}{
		{`{"type":"status","state":"subscribed","id":"p","instance":"gw0"}`, kindStatus, true, "None"},
		{`{"type":"status","state":"connected","user":"u"}`, kindStatus, false, "None"},
		{`{"type":"ping","t":1700000000000000000}`, kindPing, false, "None"},
		{`{"type":"error","code":"RATE_LIMITED","message":"slow \"down\""}`, kindError, false,
			"RATE_LIMITED"},
		{`{"type":"error","code":"A\u0042\"C","message":null}`, kindError, false, `AB"C`},
		{"{ \"type\" : \"pong\" , \"id\" : null }\n", kindOther, false, "None"},
		// escaped key and value still compare by their meaning
		{`{"typ\u0065":"st\u0061tus","state":"subscribed"}`, kindStatus, true, "None"},
	}
	for _, c := range cases {
		var f frameInfo
		expect(t, parse(t, c.raw, &f), nil)
		if f.kind != c.kind || f.subscribed != c.subscribed || codeString(&f) != c.code {
			t.Fatalf("%s: %+v code %q", c.raw, f, codeString(&f))
		}
	}
}

func TestEscapedValues(t *testing.T) {
	raw := `{"priority":"crit\u0069cal","symbol":"END\u004dARK","event_id":"a\"b\\c",` +
		`"timestamp":1}`
	var e eventInfo
	if _, err := parseEvent([]byte(raw), 0, &e); err != nil {
		t.Fatal(err)
	}
	u, ok := unescape(e.id)
	if e.prio != prioCritical || !e.end || !ok || string(u) != `a"b\c` {
		t.Fatalf("event: %+v id %q", e, u)
	}
	if u, ok := unescape([]byte(`\ud83d\ude00 \u00e9`)); !ok || string(u) != "\U0001F600 é" {
		t.Fatalf("surrogates: %q", u)
	}
}

func TestBadJSON(t *testing.T) {
	for _, raw := range []string{
		``, `{`, `{"type":"event"`, `{"type":"event",}`, `{"type":1}`, `{"state":"x"}`,
		`{"type":"event","event":{"payload":{"a":"unterminated}}}`, `[1]`,
		`{"type":"event"} trailing`,
	} {
		var f frameInfo
		if err := parseFrame([]byte(raw), &f, ignore); err == nil {
			t.Errorf("%q: no error", raw)
		}
	}
	var e eventInfo
	for _, raw := range []string{`{"timestamp":1.5}`, `{"timestamp":"1"}`, `{"event_id":null}`,
		`{"payload":{"x":[1,2}`} {
		if _, err := parseEvent([]byte(raw), 0, &e); err == nil {
			t.Errorf("%q: no error", raw)
		}
	}
}

func ignore(*eventInfo, bool) error { return nil }

func TestToken(t *testing.T) {
	// PyJWT: jwt.encode({"sub": "user7", "roles": ["trader", "risk_officer"],
	// "account": "ACC7", "iat": 1700000000, "exp": 1700003600, "iss": "trademaster",
	// "aud": "mesh-gateway"}, SECRET, algorithm="HS256", headers={"kid": "dev"})
	want := "eyJhbGciOiJIUzI1NiIsImtpZCI6ImRldiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyNyIsInJv" +
		"bGVzIjpbInRyYWRlciIsInJpc2tfb2ZmaWNlciJdLCJhY2NvdW50IjoiQUNDNyIsImlhdCI6MTcwMDAw" +
		"MDAwMCwiZXhwIjoxNzAwMDAzNjAwLCJpc3MiOiJ0cmFkZW1hc3RlciIsImF1ZCI6Im1lc2gtZ2F0ZXdh" +
		"eSJ9.LU4iliTl9t9XlWxQ4omS04Hx8vW36ZaY191Zof6w31A"
	if got := token("bench-secret-0123456789abcdef0123456789", 7, "ACC7", 1700000000); got != want {
		t.Fatalf("token %s", got)
	}
}

func TestMaskedFrame(t *testing.T) {
	for _, n := range []int{0, 5, 125, 126, 65535, 65536} {
		data := []byte(strings.Repeat("x", n))
		fr := maskedFrame(0x1, data)
		if fr[0] != 0x81 || fr[1]&0x80 == 0 {
			t.Fatalf("%d: head %x", n, fr[:2])
		}
		hl := 2
		switch fr[1] & 0x7f {
		case 126:
			hl = 4
		case 127:
			hl = 10
		}
		key := fr[hl : hl+4]
		body := fr[hl+4:]
		if len(body) != n {
			t.Fatalf("%d: body %d", n, len(body))
		}
		for i := range body {
			if body[i]^key[i&3] != 'x' {
				t.Fatalf("%d: byte %d", n, i)
			}
		}
	}
}

// A batch frame of the size the benchmark sees (3 events), as the gateway encodes it.
var benchBatch = []byte(`{"type":"batch","events":[` + strings.Repeat(
	`{"type":"event","pattern":"prices.>","stream":"TM_HIGH","seq":123456,"event":`+
		`{"event_type":"PRICE_UPDATE","payload":{"price":100.5123,"n":4567},"symbol":"SYM3",`+
		`"event_id":"0192f3a4-5b6c-7d8e-9f01-23456789abcd","correlation_id":`+
		`"0192f3a4-5b6c-7d8e-9f01-23456789abcd","priority":"high","timestamp":`+
		`1700000000123456789,"source":"bench","version":1}},`, 2) +
	`{"type":"event","pattern":"risk.>","stream":"TM_CRITICAL","seq":9,"event":` + trickyEvent +
	`}]}`)

func BenchmarkScanBatch(b *testing.B) {
	var f frameInfo
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBatch)))
	for i := 0; i < b.N; i++ {
		n := 0
		err := parseFrame(benchBatch, &f, func(e *eventInfo, conflated bool) error {
			n++
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if n != 3 {
			b.Fatal(n)
		}
	}
}

// The same with encoding/json into structs holding only the fields read.
func BenchmarkEncodingJSONBatch(b *testing.B) {
	type ev struct {
		Priority  string  `json:"priority"`
		Timestamp int64   `json:"timestamp"`
		EventID   string  `json:"event_id"`
		Symbol    *string `json:"symbol"`
	}
	type item struct {
		Event     *ev  `json:"event"`
		Conflated bool `json:"conflated"`
	}
	type frame struct {
		Type      string  `json:"type"`
		State     *string `json:"state"`
		Event     *ev     `json:"event"`
		Events    []item  `json:"events"`
		Conflated bool    `json:"conflated"`
		Code      *string `json:"code"`
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBatch)))
	for i := 0; i < b.N; i++ {
		var f frame
		if err := json.Unmarshal(benchBatch, &f); err != nil {
			b.Fatal(err)
		}
		if len(f.Events) != 3 {
			b.Fatal(len(f.Events))
		}
	}
}
