package consumer

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// TransportHost is one broker of a transport URL.
type TransportHost struct {
	Host     string
	Port     int
	Username string
	Password string
}

// Addr is host:port.
func (h TransportHost) Addr() string { return net.JoinHostPort(h.Host, strconv.Itoa(h.Port)) }

// TransportURL is an oslo.messaging transport_url.
type TransportURL struct {
	// Scheme is rabbit, amqp or amqps.
	Scheme string
	// Hosts are the brokers, tried in turn.
	Hosts []TransportHost
	// VirtualHost is the vhost ("/" when the URL names none).
	VirtualHost string
	// Options are the query parameters: overrides of [oslo_messaging_rabbit] options such as
	// ssl, ssl_ca_file, ssl_cert_file, ssl_key_file, heartbeat_timeout_threshold.
	Options url.Values
}

// TLS reports whether connections use TLS: the amqps scheme, or ssl=1/true in the options.
func (u TransportURL) TLS() bool {
	if u.Scheme == "amqps" {
		return true
	}
	switch strings.ToLower(u.Options.Get("ssl")) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

// String renders the URL with passwords masked, for logs.
func (u TransportURL) String() string {
	hosts := make([]string, len(u.Hosts))
	for i, h := range u.Hosts {
		hosts[i] = h.Addr()
		if h.Username != "" {
			hosts[i] = h.Username + ":***@" + hosts[i]
		}
	}
	return u.Scheme + "://" + strings.Join(hosts, ",") + "/" + strings.TrimPrefix(u.VirtualHost, "/")
}

// ParseTransportURL parses oslo.messaging's transport_url syntax by hand, as net/url cannot:
// scheme://user:pass@host1:port1,user2:pass2@host2:port2/vhost?options. Credentials are split at
// the last '@' and the first ':', and percent-decoded; a host without credentials takes the
// previous host's; the port defaults to 5672 (with TLS too, as oslo does); an empty vhost is "/".
func ParseTransportURL(s string) (TransportURL, error) {
	var u TransportURL
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return u, errors.New("transport URL has no scheme://")
	}
	u.Scheme = strings.ToLower(scheme)
	switch u.Scheme {
	case "rabbit", "amqp", "amqps":
	default:
		return u, fmt.Errorf("transport URL scheme %q is not rabbit, amqp or amqps", scheme)
	}
	rest, query, _ := strings.Cut(rest, "?")
	opts, err := url.ParseQuery(query)
	if err != nil {
		return u, fmt.Errorf("transport URL options: %w", err)
	}
	u.Options = opts
	// The netloc ends at the first '/' after the last '@' (passwords may hold a '/').
	at := strings.LastIndex(rest, "@")
	slash := strings.Index(rest[at+1:], "/")
	netloc, vhost := rest, ""
	if slash >= 0 {
		netloc, vhost = rest[:at+1+slash], rest[at+1+slash+1:]
	}
	if vhost, err = url.PathUnescape(vhost); err != nil {
		return u, fmt.Errorf("transport URL vhost: %w", err)
	}
	u.VirtualHost = vhost
	if vhost == "" {
		u.VirtualHost = "/"
	}
	if netloc == "" {
		return u, errors.New("transport URL names no host")
	}
	var user, pass string
	for part := range strings.SplitSeq(netloc, ",") {
		var h TransportHost
		hostport := part
		if i := strings.LastIndex(part, "@"); i >= 0 {
			creds := part[:i]
			hostport = part[i+1:]
			rawUser, rawPass, _ := strings.Cut(creds, ":")
			if user, err = url.PathUnescape(rawUser); err != nil {
				return u, fmt.Errorf("transport URL user: %w", err)
			}
			if pass, err = url.PathUnescape(rawPass); err != nil {
				return u, fmt.Errorf("transport URL password: %w", err)
			}
		}
		h.Username, h.Password = user, pass
		h.Host, h.Port = hostport, 5672
		if host, port, err := net.SplitHostPort(hostport); err == nil {
			p, err := strconv.Atoi(port)
			if err != nil || p <= 0 || p > 65535 {
				return u, fmt.Errorf("transport URL port %q", port)
			}
			h.Host, h.Port = host, p
		} else {
			h.Host = strings.Trim(hostport, "[]")
		}
		if h.Host == "" {
			return u, fmt.Errorf("transport URL host %q is empty", part)
		}
		u.Hosts = append(u.Hosts, h)
	}
	return u, nil
}
