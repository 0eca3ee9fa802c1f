package llm

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/mqttinfer/mqttinfer/inference"
)

func TestDecodeInput(t *testing.T) {
	many := "[" + strings.Repeat(`{"role":"user","content":"x"},`, MaxMessages) + `{"role":"user","content":"x"}]`
	tests := []struct {
		in, params string
		want       string // a part of the error; "" for a valid input
	}{
		{in: `{"prompt":"hi"}`},
		{in: `{"prompt":"hi","max_tokens":1,"temperature":0}`},
		{in: `{"prompt":"hi","max_tokens":100,"temperature":2}`},
		{in: `{"prompt":"hi","max_tokens":1e2}`},
		{in: `{"prompt":"hi","max_tokens":null,"temperature":null}`},
		{in: `{"messages":[{"role":"system","content":""},{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}`},
		{in: `{"prompt":"hi"}`, params: `{}`},
		{in: `{"prompt":"hi"}`, params: `null`},

		{in: ``, want: "input is required"},
		{in: `null`, want: "input is required"},
		{in: `"hi"`, want: "input must be a JSON object, got a string"},
		{in: `[]`, want: "input must be a JSON object, got an array"},
		{in: `{}`, want: "input.messages or input.prompt is required"},
		{in: `{"prompt":"hi","stream":true}`, want: `input: unknown field "stream"`},
		{in: `{"prompt":"hi","messages":[]}`, want: "either messages or prompt, not both"},
		{in: `{"prompt":""}`, want: "input.prompt is empty"},
		{in: `{"prompt":5}`, want: "input.prompt must be a string, got a number"},
		{in: `{"prompt":null}`, want: "input.prompt must be a string, got null"},
		{in: `{"messages":[]}`, want: "input.messages is empty"},
		{in: `{"messages":{}}`, want: "input.messages must be an array"},
		{in: `{"messages":null}`, want: "input.messages must be an array of {role, content} objects, got null"},
		{in: `{"messages":["hi"]}`, want: "input.messages[0] must be a {role, content} object, got a string"},
		{in: `{"messages":[{"role":"user","content":"a"},{"content":"b"}]}`, want: "input.messages[1].role is required"},
		{in: `{"messages":[{"role":"tool","content":"b"}]}`, want: `input.messages[0].role must be system, user or assistant, got "tool"`},
		{in: `{"messages":[{"role":"USER","content":"b"}]}`, want: `input.messages[0].role must be system, user or assistant, got "USER"`},
		{in: `{"messages":[{"role":1,"content":"b"}]}`, want: "input.messages[0].role must be a string"},
		{in: `{"messages":[{"role":"user"}]}`, want: "input.messages[0].content is required"},
		{in: `{"messages":[{"role":"user","content":null}]}`, want: "input.messages[0].content must be a string, got null"},
		{in: `{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}`, want: "input.messages[0].content must be a string, got an array"},
		{in: `{"messages":[{"role":"user","content":"a","name":"bob"}]}`, want: `input.messages[0]: unknown field "name"`},
		{in: `{"messages":` + many + `}`, want: fmt.Sprintf("has %d messages, more than %d", MaxMessages+1, MaxMessages)},
		{in: `{"prompt":"hi","max_tokens":0}`, want: "input.max_tokens must be 1 to 100, got 0"},
		{in: `{"prompt":"hi","max_tokens":101}`, want: "input.max_tokens must be 1 to 100, got 101"},
		{in: `{"prompt":"hi","max_tokens":-1}`, want: "input.max_tokens must be 1 to 100"},
		{in: `{"prompt":"hi","max_tokens":1.5}`, want: "input.max_tokens must be an integer, got 1.5"},
		{in: `{"prompt":"hi","max_tokens":"10"}`, want: "input.max_tokens must be an integer, got a string"},
		{in: `{"prompt":"hi","max_tokens":1e400}`, want: "input.max_tokens must be an integer"},
		{in: `{"prompt":"hi","temperature":2.01}`, want: "input.temperature must be 0 to 2, got 2.01"},
		{in: `{"prompt":"hi","temperature":-0.1}`, want: "input.temperature must be 0 to 2, got -0.1"},
		{in: `{"prompt":"hi","temperature":true}`, want: "input.temperature must be a number, got a boolean"},
		{in: `{"prompt":"hi"}`, params: `{"temperature":1}`, want: "params: chat takes no params"},
		{in: `{"prompt":"hi"}`, params: `[]`, want: "params: chat takes no params"},
	}
	for _, tt := range tests {
		var params json.RawMessage
		if tt.params != "" {
			params = json.RawMessage(tt.params)
		}
		name := tt.in
		if len(name) > 80 {
			name = name[:80]
		}
		in, err := decodeInput(json.RawMessage(tt.in), params, 100)
		if tt.want == "" {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			} else if len(in.messages) == 0 {
				t.Errorf("%s: no messages", name)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one with %q", name, err, tt.want)
		} else if !inference.IsInvalidInput(err) {
			t.Errorf("%s: %v is not an invalid input error", name, err)
		}
	}
}

func TestDecodeInputValues(t *testing.T) {
	in, err := decodeInput(json.RawMessage(`{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Sky?"}],"max_tokens":7,"temperature":0.5}`), nil, 512)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.messages) != 2 || in.messages[0] != (message{"system", "Be brief."}) || in.messages[1] != (message{"user", "Sky?"}) ||
		in.maxTokens != 7 || in.temperature == nil || *in.temperature != 0.5 {
		t.Errorf("decoded %+v", in)
	}
	in, err = decodeInput(json.RawMessage(`{"prompt":"Why?"}`), nil, 512)
	if err != nil || len(in.messages) != 1 || in.messages[0] != (message{"user", "Why?"}) || in.maxTokens != 0 || in.temperature != nil {
		t.Errorf("decoded %+v, %v", in, err)
	}
}
