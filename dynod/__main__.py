from dynod.cli.main import main

main()
