"""Stages 2 and 3: conversion of a QANN into a spiking network, and its runtime (SPEC §2–§5)."""

from __future__ import annotations

from qffs.snn.convert import check_convertible, convert, fold_batchnorm
from qffs.snn.network import NeuronRecord, SimulationResult, SpikingNetwork, SynapseRecord
from qffs.snn.neuron import IFNeuron
from qffs.snn.pooling import EventMaxPool, NaiveMaxPool

__all__ = ["EventMaxPool", "IFNeuron", "NaiveMaxPool", "NeuronRecord", "SimulationResult", "SpikingNetwork",
           "SynapseRecord", "check_convertible", "convert", "fold_batchnorm"]
