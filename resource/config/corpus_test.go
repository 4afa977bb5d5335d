package config

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The corpus (testdata/corpus, origins in its SOURCES.md) is real DRBD
// configuration collected from public sources. Every file must load, or be
// refused for one of the features blockrep does not have, by an error naming
// that feature and the statement's file:line. Files that DRBD itself
// rejects are recorded as invalid, with the line drbdadm reports.

// unsupported maps each feature blockrep refuses to the text its error carries.
var unsupportedFeatures = map[string]string{
	"volumes":      "more than one volume",
	"proxy":        "DRBD Proxy",
	"floating":     "floating",
	"stacked":      "stacked resources",
	"dual-primary": "dual-primary",
	"paths":        "more than one path per connection",
	"show-output":  "drbdsetup show output",
	"on-names":     "an on section with several host names",
	"windrbd":      "WinDRBD",
}

type corpusWant struct {
	// refused is "" when the file loads, else a key of unsupportedFeatures,
	// or "invalid" (drbdadm refuses it too), or "conflict" (a check blockrep
	// makes and drbdadm does not).
	refused string
	line    int // line of the refused statement
}

var corpus = map[string]corpusWant{
	"clusterlabs-pacemaker_clusters-from-scratch_wwwdata.res": {"dual-primary", 7},
	"drbd-utils_scripts_drbd.conf.example.res":                {"volumes", 37},
	"drbd-utils_scripts_global_common.conf":                   {},
	"drbd-utils_doc-v9_drbd.conf-example.res":                 {},
	"drbd-utils_doc-v84_drbd.conf-example.res":                {},
	"drbd-utils_doc-v84_floating.res":                         {"floating", 8},
	"drbd-utils_doc-v84_on-several-hosts.res":                 {"on-names", 6},
	"drbd-utils_windrbd-sample.res":                           {"windrbd", 57},
	"drbd-utils_v84_man.res":                                  {},
	"drbd-utils_v9_adjust_bitmap_disable.res":                 {},
	"drbd-utils_v9_adjust_bitmap_enable.res":                  {},
	"drbd-utils_v9_adjust_disk_opts_late.res":                 {},
	"drbd-utils_v9_adjust_order.res":                          {},
	"drbd-utils_v9_adjust_proxy.res":                          {"proxy", 6},
	"drbd-utils_v9_adjust_set_option_connect.res":             {},
	"drbd-utils_v9_adjust_switch_diskfull_r0.res":             {"paths", 31},
	"drbd-utils_v9_adjust_switch_interface_r0.res":            {},
	"drbd-utils_v9_adjust_tiebreaker_swap.res":                {},
	"drbd-utils_v9_block-size.res":                            {},
	"drbd-utils_v9_drbd_8.4.res":                              {},
	"drbd-utils_v9_drbdctrl.res":                              {"volumes", 13},
	"drbd-utils_v9_drbdmeta_force_flag.res":                   {},
	"drbd-utils_v9_floating-ipv4.res":                         {"floating", 3},
	"drbd-utils_v9_floating-ipv6.res":                         {"floating", 5},
	"drbd-utils_v9_man.res":                                   {},
	"drbd-utils_v9_nat-address.res":                           {},
	// drbdadm: "node-id-missing.res:16: ... 'node-id' keyword missing."
	"drbd-utils_v9_node-id-missing.res":             {"invalid", 16},
	"drbd-utils_v9_proxy_2sites_3nodes.res":         {"proxy", 32},
	"drbd-utils_v9_release_9_1_1.res":               {"dual-primary", 7},
	"drbd-utils_v9_require-drbd-module-version.res": {},
	"drbd-utils_v9_restore_show.res":                {"show-output", 2},
	// res1 uses res0's backing disk on both hosts: drbdadm's uniqueness
	// check for disks is commented out, blockrep keeps it.
	"drbd-utils_v9_resync_after.res":                     {"conflict", 34},
	"drbd-utils_v9_sh-list-adjustable.res":               {},
	"drbd-utils_v9_stacked_implicit_conn.res":            {"stacked", 35},
	"drbd-utils_v9_stacked_multi_path_2sites_3nodes.res": {"stacked", 54},
	"drbd-utils_v9_stacked_multi_path_3sites_2nodes.res": {"stacked", 94},
	"drbd-utils_v9_tiebreaker.res":                       {},
	"drbd-utils_v9_top-level-meta-disk.res":              {},
	"ecaha-rpibootstrap_nfs.res":                         {},
	"jlidr-hotl-suite_exchange.res":                      {},
	"koki-morino-ha_datastore.res":                       {},
	"linbit-ug84_administration_proxy.res":               {"proxy", 9},
	"linbit-ug84_administration_stacked.res":             {"stacked", 26},
	"linbit-ug84_configure_short.res":                    {},
	"linbit-ug84_configure_simple.res":                   {},
	"linbit-ug84_configure_volumes.res":                  {"volumes", 7},
	"linbit-ug9_administration_stacked.res":              {"stacked", 19},
	"linbit-ug9_configure_8.4-style.res":                 {},
	"linbit-ug9_configure_four-nodes.res":                {},
	"linbit-ug9_configure_global_common.conf":            {},
	"linbit-ug9_configure_mesh.res":                      {},
	"linbit-ug9_configure_simple.res":                    {},
	"linbit-ug9_configure_volumes.res":                   {"volumes", 7},
	"linbit-ug9_lvm_volumes.res":                         {"volumes", 7},
	"linbit-ug9_proxy.res":                               {"proxy", 7},
	"montydlemon-esame_highperfcomp_drbd.res":            {},
	"ppouliot-ansible-drbd_virt_cluster_r1.res":          {},
	"vasev85-pacemaker_www.res":                          {},
	"zyp725136-nsd1907_drbd.res":                         {},
}

func TestCorpus(t *testing.T) {
	files, err := filepath.Glob("testdata/corpus/*")
	if err != nil {
		t.Fatal(err)
	}
	var loaded, refused int
	byFeature := map[string]int{}
	seen := map[string]bool{}
	for _, path := range files {
		name := filepath.Base(path)
		if name == "SOURCES.md" {
			continue
		}
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			want, ok := corpus[name]
			if !ok {
				t.Fatalf("no expectation recorded for %s", name)
			}
			err := loadCorpusFile(t, path)
			if want.refused == "" {
				if err != nil {
					t.Fatalf("want it to load, got %v", err)
				}
				cfg, _ := Parse(path, mustRead(t, path))
				for _, r := range cfg.Resources {
					roundTrip(t, r) // what loads, Dump writes back
				}
				loaded++
				return
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want refusal (%s) at line %d, got %v", want.refused, want.line, err)
			}
			if ce.Pos.File != path || ce.Pos.Line != want.line {
				t.Errorf("refusal at %s, want %s:%d: %v", ce.Pos, path, want.line, err)
			}
			if want.refused != "invalid" && want.refused != "conflict" {
				feature := unsupportedFeatures[want.refused]
				if feature == "" || !strings.Contains(ce.Msg, feature) || !strings.Contains(ce.Msg, "not supported") {
					t.Errorf("refusal does not name %q as not supported: %v", feature, err)
				}
				if strings.Contains(ce.Msg, "\n") {
					t.Errorf("refusal is more than one line: %q", ce.Msg)
				}
			}
			refused++
			byFeature[want.refused]++
		})
	}
	for name := range corpus {
		if !seen[name] {
			t.Errorf("expectation for missing corpus file %s", name)
		}
	}
	var fs []string
	for f, n := range byFeature {
		fs = append(fs, f+":"+strconv.Itoa(n))
	}
	sort.Strings(fs)
	t.Logf("corpus: %d files, %d load, %d refused (%s)", len(seen), loaded, refused, strings.Join(fs, " "))
}

// loadCorpusFile parses one file through the real loader, then resolves
// every host of every resource as a node would.
func loadCorpusFile(t *testing.T, path string) error {
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(path, src)
	if err != nil {
		return err
	}
	for _, r := range cfg.Resources {
		for _, h := range r.Hosts {
			if _, err := r.Host(h.Name); err != nil {
				return err
			}
			if _, err := r.Peers(h.Name); err != nil {
				return err
			}
		}
	}
	return nil
}
