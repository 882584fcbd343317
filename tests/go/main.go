// Reference for the device's Go-compatible JSON and the W3bstream/sprout task
// hashes. Standard library only. Reads one JSON case per line on stdin and
// prints one JSON line per case: {"ok": ...} or {"err": "..."}.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strconv"
	"strings"
)

type inCase struct {
	Op             string   `json:"op"`
	Hex            string   `json:"hex"`
	Nonce          string   `json:"nonce"`
	ProjectID      string   `json:"projectID"`
	ProjectVersion string   `json:"projectVersion"`
	Keys           []string `json:"keys"`
}

// taskJSON is what the W3bstream apinode hashes (CreateTaskReq.MarshalJSON):
// the payload as raw JSON when it is valid JSON, else as a hex string.
// json.Valid stands in for gjson.ValidBytes (same grammar, neither checks UTF-8).
func taskJSON(nonce uint64, pid, pver string, payload []byte) ([]byte, error) {
	if json.Valid(payload) {
		return json.Marshal(struct {
			Nonce          uint64          `json:"nonce"`
			ProjectID      string          `json:"projectID"`
			ProjectVersion string          `json:"projectVersion,omitempty"`
			Payload        json.RawMessage `json:"payload"`
			Signature      string          `json:"signature,omitempty"`
		}{nonce, pid, pver, payload, ""})
	}
	return json.Marshal(struct {
		Nonce          uint64 `json:"nonce"`
		ProjectID      string `json:"projectID"`
		ProjectVersion string `json:"projectVersion,omitempty"`
		Payload        string `json:"payload"`
		Signature      string `json:"signature,omitempty"`
	}{nonce, pid, pver, hex.EncodeToString(payload), ""})
}

// firstValue finds a dotted key path in a JSON object; the first duplicate wins.
func firstValue(doc []byte, path []string) (json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	t, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not an object")
	}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		if kt.(string) == path[0] {
			if len(path) == 1 {
				return v, nil
			}
			return firstValue(v, path[1:])
		}
	}
	return nil, errors.New("missing key")
}

func keyUint(doc []byte, name string) (uint64, error) {
	v, err := firstValue(doc, strings.Split(name, "."))
	if err != nil {
		return 0, err
	}
	var s string
	if len(v) > 0 && v[0] == '"' {
		if err := json.Unmarshal(v, &s); err != nil {
			return 0, err
		}
	} else {
		s = string(v)
	}
	return strconv.ParseUint(s, 10, 64)
}

// serverTask parses a request body as the apinode does and returns the signed
// bytes, h1, the final digest and the signature bytes.
func serverTask(body []byte, keys []string) (map[string]string, error) {
	var req struct {
		Nonce          uint64          `json:"nonce"`
		ProjectID      string          `json:"projectID"`
		ProjectVersion string          `json:"projectVersion"`
		Payload        json.RawMessage `json:"payload"`
		Signature      string          `json:"signature"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, err
	}
	var payload []byte
	switch {
	case len(req.Payload) > 0 && (req.Payload[0] == '{' || req.Payload[0] == '['):
		payload = req.Payload
	case len(req.Payload) > 0 && req.Payload[0] == '"':
		var s string
		if err := json.Unmarshal(req.Payload, &s); err != nil {
			return nil, err
		}
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, err
		}
		payload = b
	default:
		return nil, errors.New("invalid payload format")
	}
	if req.Nonce == 0 {
		return nil, errors.New("zero nonce")
	}
	if _, ok := new(big.Int).SetString(req.ProjectID, 10); !ok {
		return nil, errors.New("failed to decode project id string")
	}
	if !strings.HasPrefix(req.Signature, "0x") {
		return nil, errors.New("signature without 0x")
	}
	sig, err := hex.DecodeString(req.Signature[2:])
	if err != nil {
		return nil, err
	}
	signed, err := taskJSON(req.Nonce, req.ProjectID, req.ProjectVersion, payload)
	if err != nil {
		return nil, err
	}
	h1 := sha256.Sum256(signed)
	digest := h1
	if len(keys) > 0 {
		if !json.Valid(payload) {
			return nil, errors.New("signed keys need a JSON payload")
		}
		buf := bytes.NewBuffer(h1[:])
		for _, k := range keys {
			u, err := keyUint(payload, k)
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", k, err)
			}
			binary.Write(buf, binary.LittleEndian, u)
		}
		digest = sha256.Sum256(buf.Bytes())
	}
	return map[string]string{
		"signed": hex.EncodeToString(signed),
		"h1":     hex.EncodeToString(h1[:]),
		"digest": hex.EncodeToString(digest[:]),
		"sig":    hex.EncodeToString(sig),
		"raw":    strconv.FormatBool(json.Valid(payload)),
	}, nil
}

// serverSprout parses a sprout /message body and returns the signed bytes.
func serverSprout(body []byte) (map[string]string, error) {
	var req struct {
		ProjectID      uint64 `json:"projectID"`
		ProjectVersion string `json:"projectVersion"`
		Data           string `json:"data"`
		Signature      string `json:"signature,omitempty"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, err
	}
	sig := req.Signature
	req.Signature = ""
	signed, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	return map[string]string{"signed": hex.EncodeToString(signed), "sig": sig}, nil
}

func run(c inCase) (interface{}, error) {
	data, err := hex.DecodeString(c.Hex)
	if err != nil {
		return nil, err
	}
	switch c.Op {
	case "raw":
		out, err := json.Marshal(json.RawMessage(data))
		return hex.EncodeToString(out), err
	case "str":
		out, err := json.Marshal(string(data))
		return hex.EncodeToString(out), err
	case "task":
		nonce, err := strconv.ParseUint(c.Nonce, 10, 64)
		if err != nil {
			return nil, err
		}
		out, err := taskJSON(nonce, c.ProjectID, c.ProjectVersion, data)
		return hex.EncodeToString(out), err
	case "server_task":
		return serverTask(data, c.Keys)
	case "server_sprout":
		return serverSprout(data)
	}
	return nil, errors.New("unknown op " + c.Op)
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<26)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for in.Scan() {
		var c inCase
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			enc.Encode(map[string]string{"err": "bad case: " + err.Error()})
			continue
		}
		res, err := run(c)
		if err != nil {
			enc.Encode(map[string]string{"err": err.Error()})
		} else {
			enc.Encode(map[string]interface{}{"ok": res})
		}
	}
}
