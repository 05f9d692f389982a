"""The broker's questions: EMQX and mosquitto-go-auth hook adapters and their decisions."""
