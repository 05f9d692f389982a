"""The pinger: the server's own MQTT client, answering PINGs and tracking presence."""
