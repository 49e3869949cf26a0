from fisherkit.apps.cli import main

main()
