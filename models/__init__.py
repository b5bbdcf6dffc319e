"""MongoDB documents: repositories (every query of the project), indexes and API shapes."""
