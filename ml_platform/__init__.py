"""Sensor data and ML platform."""
