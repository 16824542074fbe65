from extauthz.cli import main

main()
