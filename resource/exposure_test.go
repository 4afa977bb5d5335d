package resource

import (
	"strings"
	"testing"

	"github.com/blockrep/blockrep/resource/config"
)

// TestSecureByDefault: a resource that would take unauthenticated peers from beyond
// this host, or serve its export on every address, is refused at up with one line that
// names the fix — unless the configuration says the operator chose it.
func TestSecureByDefault(t *testing.T) {
	res := func(net, on string) string {
		return `resource r0 {
	net { ` + net + ` }
	on alpha { node-id 0; address 198.18.0.1:7789; disk /dev/vdb; meta-disk internal; ` + on + ` }
	on beta  { node-id 1; address 198.18.0.2:7789; disk /dev/vdb; meta-disk internal; }
}`
	}
	loop := `resource r0 {
	on alpha { node-id 0; address 127.0.0.1:7789; disk /dev/vdb; meta-disk internal; }
	on beta  { node-id 1; address 127.0.0.2:7789; disk /dev/vdb; meta-disk internal; }
}`
	cases := []struct {
		name, src, err string
	}{
		{"no secret on a network address", res("", ""), "has no authentication: set net { shared-secret \"…\"; } or net { tls yes; … }"},
		{"a shared secret", res(`shared-secret "s";`, ""), ""},
		{"TLS", res(`tls yes; tls-certificate a.pem; tls-key a.key; tls-ca ca.pem;`, ""), ""},
		{"the operator's choice", res("allow-unauthenticated yes;", ""), ""},
		{"loopback only", loop, ""},
		{"export on every address", res(`shared-secret "s";`, "export 0.0.0.0:10809;"), "add export-allow-any yes;"},
		{"export on every address, chosen", res(`shared-secret "s";`, "export 0.0.0.0:10809; export-allow-any yes;"), ""},
		{"export on one address", res(`shared-secret "s";`, "export 198.18.0.1:10809;"), ""},
	}
	for _, c := range cases {
		cfg, err := config.Parse("t.res", []byte(c.src))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		r, _ := cfg.Resource("r0")
		h, _ := r.Host("alpha")
		err = checkExposure(r, h)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || strings.Contains(err.Error(), "\n")):
			t.Errorf("%s: %v, want one line containing %q", c.name, err, c.err)
		}
	}
}
