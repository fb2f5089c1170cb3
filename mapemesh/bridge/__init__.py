"""The far-edge bridge: CloudEvents over MQTT and NextGenGW's devices."""
