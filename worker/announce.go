package worker

import (
	"encoding/json"
	"time"

	"github.com/mqttinfer/mqttinfer/inference"
	"github.com/mqttinfer/mqttinfer/topics"
)

// Status is the retained node status published on topics.Status.
type Status struct {
	Node       string   `json:"node"`
	State      string   `json:"state"` // "online" or "offline"
	Version    string   `json:"version"`
	Transport  string   `json:"transport"` // "in_process" or "remote"
	Models     []string `json:"models"`
	QueueDepth int      `json:"queue_depth"`
	Since      string   `json:"since"` // RFC 3339, when this state began

	// The remote workers' group protocol (see group): the group, this
	// connection's incarnation id, the partitions, and when the status was
	// published (Unix milliseconds; a heartbeat refreshes it).
	Group       string      `json:"group,omitempty"`
	Incarnation string      `json:"incarnation,omitempty"`
	Partitions  *GroupState `json:"partitions,omitempty"`
	At          int64       `json:"at,omitempty"`
}

// Announcement is one retained message: the catalog or a status.
type Announcement struct {
	Topic   string
	Payload []byte
}

// Catalog returns the retained catalog messages, one per supported API version.
func Catalog(prefix string, models *inference.Registry) ([]Announcement, error) {
	payload, err := json.Marshal(models.Catalog())
	if err != nil {
		return nil, err
	}
	var out []Announcement
	for _, v := range topics.Versions() {
		out = append(out, Announcement{Topic: topics.Models(prefix, v), Payload: payload})
	}
	return out, nil
}

// StatusMessages returns the retained status messages of a node, one per
// supported API version.
func StatusMessages(prefix string, s Status) ([]Announcement, error) {
	if s.Since == "" {
		s.Since = time.Now().UTC().Format(time.RFC3339)
	}
	payload, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	var out []Announcement
	for _, v := range topics.Versions() {
		out = append(out, Announcement{Topic: topics.Status(prefix, v, s.Node), Payload: payload})
	}
	return out, nil
}
