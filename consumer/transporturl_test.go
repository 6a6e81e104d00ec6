package consumer

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseTransportURL(t *testing.T) {
	tests := []struct {
		in    string
		hosts []TransportHost
		vhost string
		tls   bool
		err   bool
	}{
		{in: "rabbit://guest:guest@localhost:5672/", hosts: []TransportHost{{"localhost", 5672, "guest", "guest"}}, vhost: "/"},
		{in: "rabbit://u:p@h1:5672,u2:p2@h2:5673/nova", hosts: []TransportHost{{"h1", 5672, "u", "p"}, {"h2", 5673, "u2", "p2"}}, vhost: "nova"},
		{in: "rabbit://u:p@h1,h2:5671/", hosts: []TransportHost{{"h1", 5672, "u", "p"}, {"h2", 5671, "u", "p"}}, vhost: "/"},
		{in: "rabbit://us%40er:p%2Fa:s@s@h/v", hosts: []TransportHost{{"h", 5672, "us@er", "p/a:s@s"}}, vhost: "v"},
		{in: "rabbit://u:pa/ss@h:1/v%2Fx", hosts: []TransportHost{{"h", 1, "u", "pa/ss"}}, vhost: "v/x"},
		{in: "rabbit://u:p@[::1]:5672/", hosts: []TransportHost{{"::1", 5672, "u", "p"}}, vhost: "/"},
		{in: "rabbit://u:p@[::1]/", hosts: []TransportHost{{"::1", 5672, "u", "p"}}, vhost: "/"},
		{in: "amqps://u:p@h", hosts: []TransportHost{{"h", 5672, "u", "p"}}, vhost: "/", tls: true},
		{in: "rabbit://u:p@h/?ssl=1&ssl_ca_file=/etc/ca.pem", hosts: []TransportHost{{"h", 5672, "u", "p"}}, vhost: "/", tls: true},
		{in: "rabbit://h", hosts: []TransportHost{{"h", 5672, "", ""}}, vhost: "/"},
		{in: "kafka://h", err: true},
		{in: "h:5672", err: true},
		{in: "rabbit://", err: true},
		{in: "rabbit://u:p@h:99999/", err: true},
		{in: "rabbit://u:p@h:x/", err: true},
		{in: "rabbit://u:p@h1,,h2/", err: true},
		{in: "rabbit://u:p@h/%zz", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := ParseTransportURL(tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("err %v", err)
			}
			if tt.err {
				return
			}
			if !reflect.DeepEqual(u.Hosts, tt.hosts) || u.VirtualHost != tt.vhost || u.TLS() != tt.tls {
				t.Fatalf("got %+v vhost %q tls %v", u.Hosts, u.VirtualHost, u.TLS())
			}
			if s := u.String(); tt.hosts[0].Password != "" && strings.Contains(s, ":"+tt.hosts[0].Password+"@") {
				t.Fatalf("String() shows the password: %s", s)
			}
		})
	}
	u, _ := ParseTransportURL("rabbit://u:p@h/?ssl_ca_file=/etc/ca.pem&heartbeat_timeout_threshold=30")
	if u.Options.Get("ssl_ca_file") != "/etc/ca.pem" || u.Options.Get("heartbeat_timeout_threshold") != "30" {
		t.Fatalf("options %v", u.Options)
	}
}

func FuzzParseTransportURL(f *testing.F) {
	f.Add("rabbit://u:p@h1:5672,u2:p2@h2:5673/nova?ssl=1")
	f.Add("rabbit://us%40er:p%2Fa:s@s@[::1]/v")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseTransportURL(s)
		if err == nil && (len(u.Hosts) == 0 || u.VirtualHost == "") {
			t.Fatalf("accepted %q as %+v", s, u)
		}
	})
}
