"""Thin FastAPI routers: parse, hand over to a service, render. No logic of their own."""
