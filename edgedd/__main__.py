from edgedd.cli.host import main

main()
