"""Offline trainer of tocpl_ros (installed as tocpl_training)"""
