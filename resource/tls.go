package resource

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/blockrep/blockrep/resource/config"
)

// tlsConfigs builds the TLS configurations of a node's peer links (net { tls yes; }):
// the client one for dialing and the server one for the listener, both presenting the
// node's certificate and trusting only the configured CA. nil, nil when TLS is off.
// Every connection of the node must agree on TLS: the listener serves them all.
func tlsConfigs(host *config.Host, peers []*config.Peer) (client, server *tls.Config, err error) {
	var on, off bool
	var n *config.NetOptions
	for _, p := range peers {
		if p.Net.TLS {
			on, n = true, &p.Net
		} else {
			off = true
		}
	}
	if !on {
		return nil, nil, nil
	}
	if off {
		return nil, nil, &config.Error{Pos: host.Pos, Msg: fmt.Sprintf("on %s: tls yes on some connections and not on others (one listener serves them all)", host.Name)}
	}
	certFile, keyFile := n.TLSCertificate, n.TLSKey
	if host.TLSCertificate != "" {
		certFile = host.TLSCertificate
	}
	if host.TLSKey != "" {
		keyFile = host.TLSKey
	}
	if certFile == "" || keyFile == "" || n.TLSCA == "" {
		return nil, nil, &config.Error{Pos: host.Pos, Msg: fmt.Sprintf("on %s: tls yes needs tls-certificate, tls-key and tls-ca", host.Name)}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: certificate %s / key %s: %w", certFile, keyFile, err)
	}
	pem, err := os.ReadFile(n.TLSCA)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("tls: CA %s holds no PEM certificate", n.TLSCA)
	}
	client = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}
	server = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS13}
	return client, server, nil
}

// exportTLS builds the TCP export's TLS configuration (export-tls yes|require): the
// node's certificate, client certificates required and verified against the CA. The
// certificate, key and CA are the ones of the peer links (on section or net).
func exportTLS(res *config.Resource, host *config.Host) (*tls.Config, error) {
	n := res.Net
	certFile, keyFile := n.TLSCertificate, n.TLSKey
	if host.TLSCertificate != "" {
		certFile = host.TLSCertificate
	}
	if host.TLSKey != "" {
		keyFile = host.TLSKey
	}
	if certFile == "" || keyFile == "" || n.TLSCA == "" {
		return nil, &config.Error{Pos: host.Pos, Msg: fmt.Sprintf("on %s: export-tls needs tls-certificate, tls-key and tls-ca", host.Name)}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("export-tls: certificate %s / key %s: %w", certFile, keyFile, err)
	}
	pem, err := os.ReadFile(n.TLSCA)
	if err != nil {
		return nil, fmt.Errorf("export-tls: CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("export-tls: CA %s holds no PEM certificate", n.TLSCA)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS13}, nil
}
