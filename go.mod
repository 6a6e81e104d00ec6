module github.com/glance-sidecar/glance-sidecar

go 1.26
