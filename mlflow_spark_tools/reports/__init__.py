"""Experiment reports: charts of an experiment's table, as one offline HTML file or images."""
