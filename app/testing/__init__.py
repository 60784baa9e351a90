"""The pytest plugin that gives other test suites a real mirror (entry point pytest11), and the
dump of a whole mirror that the plugin and this repository's tests compare."""
