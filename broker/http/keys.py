"""Typed application keys shared by the HTTP modules (aiohttp AppKey)."""

from __future__ import annotations

from aiohttp import web

from broker import metrics, settings
from broker.dispatcher.service import Dispatcher
from broker.http import streams

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
METRICS = web.AppKey("metrics", metrics.Metrics)
HUB = web.AppKey("hub", streams.EventHub)
SETTINGS = web.AppKey("http_settings", settings.HttpSettings)
