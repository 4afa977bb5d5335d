package iscsi

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// kv is one text key=value pair (RFC 7143 section 6). Order matters to the protocol
// (SendTargets lists TargetAddress after its TargetName), so lists of kv are kept, not
// maps.
type kv struct {
	k, v string
}

// parseText splits a text data segment into key=value pairs. Each pair ends with a NUL;
// a missing final NUL is tolerated.
func parseText(b []byte) ([]kv, error) {
	var out []kv
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0)
		var item []byte
		if i < 0 {
			item, b = b, nil
		} else {
			item, b = b[:i], b[i+1:]
		}
		if len(item) == 0 {
			continue // padding NULs
		}
		k, v, ok := bytes.Cut(item, []byte{'='})
		if !ok {
			return out, fmt.Errorf("text key without '=': %q", truncate(string(item), 64))
		}
		if len(k) == 0 || len(k) > 63 {
			return out, fmt.Errorf("bad text key %q", truncate(string(k), 64))
		}
		out = append(out, kv{string(k), string(v)})
	}
	return out, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func encodeText(kvs []kv) []byte {
	var b bytes.Buffer
	for _, p := range kvs {
		b.WriteString(p.k)
		b.WriteByte('=')
		b.WriteString(p.v)
		b.WriteByte(0)
	}
	return b.Bytes()
}

func lookup(kvs []kv, k string) (string, bool) {
	for _, p := range kvs {
		if p.k == k {
			return p.v, true
		}
	}
	return "", false
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

func parseBool(v string) (bool, error) {
	switch v {
	case "Yes":
		return true, nil
	case "No":
		return false, nil
	}
	return false, fmt.Errorf("%q is not Yes or No", v)
}

func parseNumber(v string) (uint64, error) {
	// RFC 7143 section 6.1: decimal, or hex with 0x (binary values are not used for
	// the numeric keys we negotiate).
	if strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X") {
		return strconv.ParseUint(v[2:], 16, 64)
	}
	return strconv.ParseUint(v, 10, 64)
}
