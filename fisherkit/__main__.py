from fisherkit.cli import main

main()
