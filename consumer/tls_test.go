package consumer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client certificate into dir.
func testPKI(t *testing.T, dir string) (caFile, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, usage x509.ExtKeyUsage, name string) (string, string) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".crt", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kder)
	}
	serverCert, serverKey = leaf(2, x509.ExtKeyUsageServerAuth, "server")
	clientCert, clientKey = leaf(3, x509.ExtKeyUsageClientAuth, "client")
	return write("ca.crt", "CERTIFICATE", caDER), serverCert, serverKey, clientCert, clientKey
}

// TestTLSFromTransportURL checks that oslo's ssl options in the transport URL give a TLS
// connection that verifies the broker against the CA file and presents the client
// certificate: a TLS server on loopback requiring client certificates sees the handshake.
func TestTLSFromTransportURL(t *testing.T) {
	dir := t.TempDir()
	ca, srvCrt, srvKey, cliCrt, cliKey := testPKI(t, dir)
	pair, err := tls.LoadX509KeyPair(srvCrt, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(mustRead(t, ca))
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	handshakes := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if err := tc.Handshake(); err == nil {
				handshakes <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
			}
			c.Close() // no AMQP here: the source fails after the handshake and retries
		}
	}()
	url := "rabbit://u:p@" + ln.Addr().String() + "/?ssl=1&ssl_ca_file=" + ca + "&ssl_cert_file=" + cliCrt + "&ssl_key_file=" + cliKey
	src, err := NewAMQPSource(AMQPOptions{TransportURL: url, ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)}, HandlerFunc(func(context.Context, Event) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	select {
	case cn := <-handshakes:
		if cn != "client" {
			t.Errorf("client certificate %q", cn)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no TLS handshake completed")
	}
	cancel()
	<-done
	if src.Ready() == nil {
		t.Fatal("ready without a broker")
	}

	// A CA that did not sign the broker's certificate fails the handshake.
	other, _, _, _, _ := testPKI(t, t.TempDir())
	bad, err := NewAMQPSource(AMQPOptions{TransportURL: "amqps://u:p@" + ln.Addr().String() + "/", CAFile: other, Logger: slog.New(slog.DiscardHandler)},
		HandlerFunc(func(context.Context, Event) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.session(context.Background(), bad.url.Hosts[0]); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("a broker whose certificate the CA did not sign: %v", err)
	}
	if _, err := NewAMQPSource(AMQPOptions{TransportURL: "amqps://h/", CAFile: filepath.Join(dir, "missing")}, nil); err == nil {
		t.Fatal("a missing CA file was accepted")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
