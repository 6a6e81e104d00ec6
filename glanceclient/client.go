// Package glanceclient is everything glance-sidecar says to the Glance v2 Images API, through
// Gophercloud: authentication (clouds.yaml, OS_* variables or explicit options), reading images
// and waiting for them to become active, ranged and streaming downloads with checksum
// verification, JSON-patch of properties, creating and uploading images, and the image actions.
//
// Start with [New] and [Options]; then [Client.Get], [Client.WaitActive], [Client.OpenRange]
// (an io.ReaderAt over the image data) and [Client.PatchProperties]. Failures callers act on are
// sentinel errors ([ErrNotFound], [ErrForbidden], [ErrConflict], [ErrRangeUnsupported],
// [ErrChecksumMismatch], …) to test with errors.Is. Every call takes a context, and retries
// connection errors and 5xx answers with capped exponential backoff and jitter, never other 4xx.
package glanceclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/config"
	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options say how to reach and authenticate to Glance. Credentials come from the first source
// that is set: explicit options (AuthURL), then a clouds.yaml cloud (Cloud, or OS_CLOUD), then
// the OS_* environment variables.
type Options struct {
	// Cloud is the clouds.yaml entry to use. Optional; OS_CLOUD is read when empty.
	Cloud string
	// CloudsFile is the clouds.yaml path. Optional; OS_CLIENT_CONFIG_FILE and the standard
	// locations are searched when empty.
	CloudsFile string

	// AuthURL is the Keystone endpoint for explicit credentials. Setting it selects them.
	AuthURL string
	// Username, Password, UserDomainName, ProjectName and ProjectDomainName are password
	// credentials (domains default to "Default").
	Username, Password, UserDomainName, ProjectName, ProjectDomainName string
	// ApplicationCredentialID (or Name with Username) and Secret are application credentials.
	ApplicationCredentialID, ApplicationCredentialName, ApplicationCredentialSecret string

	// Region selects the image endpoint's region. Optional.
	Region string
	// Interface is the endpoint interface: public, internal or admin. Optional: clouds.yaml's
	// interface or OS_INTERFACE apply when empty, and public when they are empty too.
	Interface string
	// CAFile is a PEM bundle to trust for TLS. Optional.
	CAFile string
	// Insecure skips TLS verification. For test beds only.
	Insecure bool

	// Retries is how many times a failed call is tried again (default 4; negative: never).
	Retries int
	// RetryBase and RetryMax bound the backoff between tries (defaults 200 ms and 5 s).
	RetryBase, RetryMax time.Duration
	// RequestTimeout bounds waiting for response headers (default 60 s); bodies may stream
	// longer, bounded by the caller's context.
	RequestTimeout time.Duration
	// UserAgent is prepended to Gophercloud's User-Agent (default "glance-sidecar").
	UserAgent string
	// Logger receives retries and re-authentications (default slog.Default()).
	Logger *slog.Logger
	// Registerer, when set, gets glance_sidecar_glance_requests_total{method,code}: every
	// HTTP request the client makes (Keystone's included).
	Registerer prometheus.Registerer
}

// Validate fills in defaults and checks the options.
func (o *Options) Validate() error {
	switch o.Interface {
	case "", "public", "internal", "admin":
	default:
		return fmt.Errorf("interface %q is not public, internal or admin", o.Interface)
	}
	if o.Retries == 0 {
		o.Retries = 4
	}
	if o.RetryBase <= 0 {
		o.RetryBase = 200 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 60 * time.Second
	}
	if o.UserAgent == "" {
		o.UserAgent = "glance-sidecar"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.AuthURL != "" && o.Password == "" && o.ApplicationCredentialSecret == "" {
		return errors.New("auth URL given without a password or application credential secret")
	}
	return nil
}

// Client talks to one Glance. It is safe for concurrent use.
type Client struct {
	sc   *gophercloud.ServiceClient
	opts Options
	log  *slog.Logger
}

// New authenticates and returns a Client for the image service in the catalog.
func New(ctx context.Context, opts Options) (*Client, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("glance client options: %w", err)
	}
	ao, eo, tlsConfig, err := opts.authOptions()
	if err != nil {
		return nil, err
	}
	ao.AllowReauth = true // tokens expire; a daemon must re-authenticate by itself
	if tlsConfig == nil {
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", opts.CAFile)
		}
		tlsConfig.RootCAs = pool
	}
	if opts.Insecure {
		tlsConfig.InsecureSkipVerify = true
	}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: opts.RequestTimeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
	}
	var rt http.RoundTripper = transport
	if opts.Registerer != nil {
		requests := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glance_sidecar_glance_requests_total",
			Help: "HTTP requests to Glance and Keystone by method and status code.",
		}, []string{"method", "code"})
		if err := opts.Registerer.Register(requests); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
		rt = promhttp.InstrumentRoundTripperCounter(requests, transport)
	}
	pc, err := config.NewProviderClient(ctx, ao, config.WithHTTPClient(http.Client{Transport: rt}))
	if err != nil {
		return nil, fmt.Errorf("authenticating to %s: %w", ao.IdentityEndpoint, err)
	}
	pc.UserAgent.Prepend(opts.UserAgent)
	eo.Region = firstNonEmpty(opts.Region, eo.Region)
	if opts.Interface != "" {
		eo.Availability = availability(opts.Interface)
	}
	sc, err := openstack.NewImageV2(pc, eo)
	if err != nil {
		return nil, fmt.Errorf("finding the image endpoint: %w", err)
	}
	return NewWithServiceClient(sc, opts), nil
}

// NewWithServiceClient wraps an image ServiceClient the caller built (tests, or programs that
// share one ProviderClient). opts supply the retry policy and logger.
func NewWithServiceClient(sc *gophercloud.ServiceClient, opts Options) *Client {
	_ = opts.Validate()
	return &Client{sc: sc, opts: opts, log: opts.Logger}
}

func (o *Options) authOptions() (gophercloud.AuthOptions, gophercloud.EndpointOpts, *tls.Config, error) {
	if o.AuthURL != "" {
		ao := gophercloud.AuthOptions{
			IdentityEndpoint:            o.AuthURL,
			Username:                    o.Username,
			Password:                    o.Password,
			DomainName:                  firstNonEmpty(o.UserDomainName, "Default"),
			ApplicationCredentialID:     o.ApplicationCredentialID,
			ApplicationCredentialName:   o.ApplicationCredentialName,
			ApplicationCredentialSecret: o.ApplicationCredentialSecret,
		}
		if o.ApplicationCredentialSecret == "" && o.ProjectName != "" {
			ao.Scope = &gophercloud.AuthScope{ProjectName: o.ProjectName, DomainName: firstNonEmpty(o.ProjectDomainName, "Default")}
		}
		return ao, gophercloud.EndpointOpts{}, nil, nil
	}
	cloud := firstNonEmpty(o.Cloud, os.Getenv("OS_CLOUD"))
	if cloud != "" {
		var popts []clouds.ParseOption
		popts = append(popts, clouds.WithCloudName(cloud))
		if o.CloudsFile != "" {
			popts = append(popts, clouds.WithLocations(o.CloudsFile))
		}
		ao, eo, tlsConfig, err := clouds.Parse(popts...)
		if err != nil {
			return ao, eo, nil, fmt.Errorf("reading cloud %q from clouds.yaml: %w", cloud, err)
		}
		return ao, eo, tlsConfig, nil
	}
	ao, err := openstack.AuthOptionsFromEnv()
	if err != nil {
		return ao, gophercloud.EndpointOpts{}, nil, fmt.Errorf("no credentials: set a cloud, OS_CLOUD, or the OS_* variables: %w", err)
	}
	eo := gophercloud.EndpointOpts{Region: os.Getenv("OS_REGION_NAME")}
	if i := os.Getenv("OS_INTERFACE"); i != "" {
		eo.Availability = availability(i)
	}
	return ao, eo, nil, nil
}

func availability(i string) gophercloud.Availability {
	switch i {
	case "public", "publicURL":
		return gophercloud.AvailabilityPublic
	case "admin", "adminURL":
		return gophercloud.AvailabilityAdmin
	}
	return gophercloud.AvailabilityInternal
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
