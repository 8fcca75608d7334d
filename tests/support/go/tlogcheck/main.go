// tlogcheck verifies keycourier's transparency-log output with Go's reference
// code (golang.org/x/mod/sumdb/note and tlog). It reads one JSON request on
// stdin and exits 0 when every check passes, 1 (with the reason on stderr)
// when one fails, 2 on a malformed request.
package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	LogIndex int64    `json:"logIndex"`
	TreeSize int64    `json:"treeSize"`
	RootHash string   `json:"rootHash"`
	Hashes   []string `json:"hashes"`
	Body     string   `json:"body"`
}

type consistency struct {
	Old     int64    `json:"old"`
	New     int64    `json:"new"`
	OldRoot string   `json:"oldRoot"`
	NewRoot string   `json:"newRoot"`
	Hashes  []string `json:"hashes"`
}

type request struct {
	Vkey        string       `json:"vkey"`
	Checkpoint  string       `json:"checkpoint"`
	Inclusion   []inclusion  `json:"inclusion"`
	Consistency *consistency `json:"consistency"`
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(code)
}

func hashOf(text string) tlog.Hash {
	var h tlog.Hash
	raw, err := hex.DecodeString(text)
	if err != nil || len(raw) != len(h) {
		fail(2, "not a hex hash: %q", text)
	}
	copy(h[:], raw)
	return h
}

func hashes(list []string) []tlog.Hash {
	out := make([]tlog.Hash, 0, len(list))
	for _, text := range list {
		out = append(out, hashOf(text))
	}
	return out
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fail(2, "bad request: %v", err)
	}
	if req.Checkpoint != "" {
		verifier, err := note.NewVerifier(req.Vkey)
		if err != nil {
			fail(1, "verifier key: %v", err)
		}
		opened, err := note.Open([]byte(req.Checkpoint), note.VerifierList(verifier))
		if err != nil {
			fail(1, "checkpoint: %v", err)
		}
		lines := strings.Split(strings.TrimSuffix(opened.Text, "\n"), "\n")
		if len(lines) < 3 {
			fail(1, "checkpoint body has %d lines", len(lines))
		}
		size, err := strconv.ParseInt(lines[1], 10, 64)
		if err != nil {
			fail(1, "checkpoint size: %v", err)
		}
		root, err := base64.StdEncoding.DecodeString(lines[2])
		if err != nil || len(root) != 32 {
			fail(1, "checkpoint root hash: %v", err)
		}
		for _, inc := range req.Inclusion {
			if inc.TreeSize != size || inc.RootHash != hex.EncodeToString(root) {
				fail(1, "proof for leaf %d is against another tree than the checkpoint", inc.LogIndex)
			}
		}
		fmt.Printf("checkpoint %s size %d\n", lines[0], size)
	}
	for _, inc := range req.Inclusion {
		leaf := tlog.RecordHash([]byte(inc.Body))
		err := tlog.CheckRecord(hashes(inc.Hashes), inc.TreeSize, hashOf(inc.RootHash), inc.LogIndex, leaf)
		if err != nil {
			fail(1, "inclusion of leaf %d: %v", inc.LogIndex, err)
		}
	}
	if c := req.Consistency; c != nil {
		err := tlog.CheckTree(hashes(c.Hashes), c.New, hashOf(c.NewRoot), c.Old, hashOf(c.OldRoot))
		if err != nil {
			fail(1, "consistency %d -> %d: %v", c.Old, c.New, err)
		}
	}
	fmt.Println("ok")
}
