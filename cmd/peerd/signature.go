package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// maxSignature bounds a signature download: minisign's are a few hundred
// bytes, and a URL that serves something else must not fill memory.
const maxSignature = 64 << 10

// readSignature reads a minisign signature from a local file or an
// http(s) URL, as --artifact takes either (a release's .minisig sits
// beside its binary).
func readSignature(ctx context.Context, src string) ([]byte, error) {
	if !strings.HasPrefix(src, "http://") && !strings.HasPrefix(src, "https://") {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("read signature: %w", err)
		}
		return b, nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return nil, fmt.Errorf("signature URL %s: %w", src, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("download signature: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("download signature %s: %s; check the URL (or give a local FILE)", src, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxSignature+1))
	if err != nil {
		return nil, fmt.Errorf("download signature %s: %w", src, err)
	}
	if len(b) > maxSignature {
		return nil, fmt.Errorf("download signature %s: more than %d KiB, which no minisign signature is: check the URL", src, maxSignature>>10)
	}
	return b, nil
}
