package broker

import (
	"github.com/mqttinfer/mqttinfer/api"
	"github.com/mqttinfer/mqttinfer/topics"
)

// identityStage enforces that a device publishes requests only under its own
// id: the MQTT client id, or the username when auth is on.
type identityStage struct{}

func (identityStage) check(in *inbound) *api.Error {
	if err := topics.ValidID(in.sender); err != nil {
		return api.Errorf(api.Forbidden, "sender id %q cannot publish requests: %v", in.sender, err)
	}
	if in.topic.Device != in.sender {
		return api.Errorf(api.Forbidden, "device id %q in the topic is not the sender %q: publish on %s",
			in.topic.Device, in.sender, topics.Request(in.topic.Prefix, in.topic.Version, in.sender, in.topic.Model))
	}
	return nil
}
