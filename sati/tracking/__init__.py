"""Everything MLflow: the contract of tag and parameter names (``contract``), one client per command
(``store``), a search's runs (``searches``), the Model Registry (``registry``), confirmation and
evaluation runs (``runs``). Nothing outside this package spells a ``sati.*`` tag name."""
