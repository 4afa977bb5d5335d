package iscsi

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// chapMD5 is CHAP_A=5: the response is MD5(identifier || secret || challenge) (RFC 1994
// section 4.1, RFC 7143 section 12.1.3). MD5 is what iSCSI CHAP specifies; CHAP only
// proves knowledge of the secret, it does not protect the session.
const chapMD5 = "5"

func chapResponse(id byte, secret string, challenge []byte) []byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeBinary decodes an iSCSI binary value: 0x/0X hex or 0b/0B base64 (RFC 7143
// section 6.1).
func decodeBinary(v string) ([]byte, error) {
	switch {
	case strings.HasPrefix(v, "0x"), strings.HasPrefix(v, "0X"):
		s := v[2:]
		if len(s)%2 == 1 {
			s = "0" + s
		}
		return hex.DecodeString(s)
	case strings.HasPrefix(v, "0b"), strings.HasPrefix(v, "0B"):
		return base64.StdEncoding.DecodeString(v[2:])
	}
	return nil, fmt.Errorf("binary value %q has neither 0x nor 0b prefix", truncate(v, 32))
}

func encodeHex(b []byte) string { return "0x" + hex.EncodeToString(b) }

// chapAnswer computes CHAP_N and CHAP_R from the target's CHAP_A, CHAP_I and CHAP_C.
func chapAnswer(keys []kv, user, secret string) ([]kv, error) {
	a, _ := lookup(keys, "CHAP_A")
	if a != chapMD5 {
		return nil, fmt.Errorf("target chose CHAP algorithm %q, only MD5 (5) is supported", a)
	}
	is, ok := lookup(keys, "CHAP_I")
	if !ok {
		return nil, fmt.Errorf("target sent no CHAP_I")
	}
	id, err := strconv.ParseUint(is, 0, 8)
	if err != nil {
		return nil, fmt.Errorf("bad CHAP_I %q", is)
	}
	cs, ok := lookup(keys, "CHAP_C")
	if !ok {
		return nil, fmt.Errorf("target sent no CHAP_C")
	}
	c, err := decodeBinary(cs)
	if err != nil || len(c) == 0 {
		return nil, fmt.Errorf("bad CHAP_C: %v", err)
	}
	return []kv{{"CHAP_N", user}, {"CHAP_R", encodeHex(chapResponse(byte(id), secret, c))}}, nil
}
